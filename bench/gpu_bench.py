"""GPU throughput: our training against the tutorial loop, and both against the model's own rate
on synthetic data already on the device, EfficientNet-Lite0 (packaged weights) at 224 px.

  synthetic   random (B, 3, 224, 224) batches already on the GPU: the model's ceiling (our
              runtime: autocast at runtime.precision, channels_last)
  ours        transferline.engine.train.train on hymenoptera prepared by our own stages (decoded
  once,
              loader workers, pinned memory), strategy `finetune`
  tutorial    the tutorial's loop on the GPU: ImageFolder, batch 4, every JPEG decoded at full
              size every epoch, fp32 (tutorial_baseline.py moved to the device, as the tutorial
              itself does with `device = "cuda"`)

Each is run --repeats times; the table has the median images/s. It runs unchanged on any CUDA
machine; `--device cpu --quick` is the smoke test the suite runs (no numbers worth keeping).

    .venv/bin/python -m bench.gpu_bench --write        # on a CUDA machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.machine import ROOT, SHARED, load, markers, write_block
from bench.train_bench import DATASET, IMAGE_SIZE, prepare
from transferline import models
from transferline.config.params import validate
from transferline.engine import fit as loop
from transferline.engine import runtime
from transferline.engine.train import train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(rt: runtime.Runtime, batch: int, steps: int) -> float:
    """Training steps per second x batch on random inputs that never leave the device."""
    model = rt.place(models.build("efficientnet_lite0", 2, "pretrained").train())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = rt.grad_scaler()
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=rt.device)
    y = torch.randint(0, 2, (batch,), device=rt.device)
    batches = [(x, y)] * steps
    loop.run_epoch(model, batches[:2], rt, opt, scaler)  # warm-up (kernel choice, allocator)
    _sync(rt.device)
    start = time.perf_counter()
    loop.run_epoch(model, batches, rt, opt, scaler)
    _sync(rt.device)
    return batch * steps / (time.perf_counter() - start)


def ours(work: Path, device: str, epochs: int, workers: int) -> float:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["train"].update(image_size=IMAGE_SIZE, workers=workers)
    raw.setdefault("runtime", {})["device"] = device
    raw["strategies"]["finetune"]["epochs"] = epochs
    params = validate(raw, "params.yaml (gpu_bench overrides)")
    got = train(
        "finetune",
        params,
        clean_dir=work / "clean",
        split_dir=work / "split",
        model_path=work / "m.pt",
        metrics_path=work / "m.json",
        plots_path=work / "p.tsv",
    )
    rows = got["history"][1:] or got["history"]  # the first epoch warms up
    return sum(r["images"] for r in rows) / sum(r["seconds"] for r in rows)


def tutorial(data: Path, device: torch.device, epochs: int, workers: int) -> float:
    """The tutorial's train/val loop, on `device`; images/s over all epochs."""
    import timm
    from torchvision import datasets
    from torchvision import transforms as T

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tf = {
        "train": T.Compose(
            [
                T.RandomResizedCrop(IMAGE_SIZE),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        ),
        "val": T.Compose(
            [T.Resize(256), T.CenterCrop(IMAGE_SIZE), T.ToTensor(), T.Normalize(mean, std)]
        ),
    }
    sets = {k: datasets.ImageFolder(str(data / k), tf[k]) for k in tf}
    loaders = {
        k: torch.utils.data.DataLoader(sets[k], batch_size=4, shuffle=True, num_workers=workers)
        for k in sets
    }
    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for phase in ("train", "val"):
            net.train(phase == "train")
            for x, y in loaders[phase]:
                x, y = x.to(device), y.to(device)
                opt.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    loss = torch.nn.functional.cross_entropy(net(x), y)
                    if phase == "train":
                        loss.backward()
                        opt.step()
                seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - start)


def measure(args) -> dict[str, list[float]]:
    rt = runtime.resolve(device=args.device, precision="auto", deterministic=False)
    out: dict[str, list[float]] = {"synthetic": [], "ours": [], "tutorial": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(args.data, work, validate(yaml.safe_load((ROOT / "params.yaml").read_text())))
        for _ in range(args.repeats):
            with runtime.torch_state(rt, seed=0, threads=args.threads):
                out["synthetic"].append(synthetic(rt, args.batch, args.steps))
            out["ours"].append(ours(work, args.device, args.epochs, args.workers))
            out["tutorial"].append(tutorial(args.data, rt.device, args.epochs, args.workers))
            print({k: round(v[-1], 1) for k, v in out.items()}, file=sys.stderr)
    return out


def table(runs: dict[str, list[float]], args, device_name: str, load_before: str) -> str:
    rows = ["| run | images/s (median) | runs | vs tutorial |", "|---|---|---|---|"]
    tut = statistics.median(runs["tutorial"])
    for name, values in runs.items():
        med = statistics.median(values)
        rows.append(
            f"| {name} | {med:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {med / tut:.1f}x |"
        )
    begin, end = markers("gpu")
    return "\n".join(
        [
            begin,
            f"Device: {device_name}; load before: {load_before}; command: "
            f"`python -m bench.gpu_bench --repeats {args.repeats} --epochs "
            f"{args.epochs} --workers {args.workers}`.",
            "",
            *rows,
            end,
        ]
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (smoke test)")
    ap.add_argument("--data", type=Path, default=DATASET, help="hymenoptera_data folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of ours and the tutorial")
    ap.add_argument("--batch", type=int, default=64, help="synthetic batch size")
    ap.add_argument("--steps", type=int, default=30, help="synthetic training steps")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader processes")
    ap.add_argument("--threads", type=int, default=8, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs, args.batch, args.steps, args.workers = 1, 1, 2, 2, 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            "no CUDA device here: nothing to measure (use --device cpu --quick to check "
            "that the script runs)"
        )
    if not args.data.is_dir():
        sys.exit(
            f"{args.data}: not found; point --data at hymenoptera_data (train/, val/) or "
            f"set TRANSFERLINE_SHARED (now {SHARED})"
        )
    load_before = load()
    runs = measure(args)
    name = torch.cuda.get_device_name(args.device) if args.device != "cpu" else "cpu"
    block = table(runs, args, name, load_before)
    print(block)
    if args.write and not args.quick:
        write_block("gpu", "gpu", block)


if __name__ == "__main__":
    main()
