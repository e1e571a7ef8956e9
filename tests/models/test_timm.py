"""Any timm model as `arch`: four families (ResNet, MobileNetV3, ConvNeXt, ViT) trained, evaluated
and exported with parity from random weights; normalisation, crop fraction, classifier and
blocks from timm's own configuration and API; `weights: <file>` (safetensors or a PyTorch state
dict) loaded, refused when unsafe or of another architecture; unknown names refused with the
closest known; no network -> a message naming the model, where its weights live and where to put
them."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from transferline import models
from transferline.config import archs
from transferline.config.errors import StageError
from transferline.config.params import Export
from transferline.config.validate import check
from transferline.engine.evaluate import evaluate
from transferline.models import export
from transferline.models.checkpoints import read_checkpoint

from helpers import ROOT, make_clean_split, make_params, run_train

# the smallest model timm has of each family; blocks = timm's coarse groups, stem and head left out
FAMILIES = {
    "resnet10t": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenetv3_small_050": [*(f"blocks.{i}" for i in range(6)), "conv_head"],
    "convnext_atto": [f"stages.{i}" for i in range(4)],
    "test_vit": [*(f"blocks.{i}" for i in range(5)), "blocks.5 + norm"],
}
CLASSIFIER = {
    "resnet10t": "fc",
    "mobilenetv3_small_050": "classifier",
    "convnext_atto": "head.fc",
    "test_vit": "head",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    clean, split = make_clean_split(tmp_path_factory.mktemp("data"), per_class=6, val_per_class=2)
    shutil.copy(split / "val.csv", split / "test.csv")  # evaluate scores the test rows
    return clean, split


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_a_timm_family_trains_evaluates_and_exports_with_parity(
    arch, dataset, params_raw, tmp_path
):
    strategy = {
        "arch": arch,
        "weights": "none",
        "trainable": 2,
        "optimizer": "adam",
        "lr": 0.001,
        "epochs": 1,
    }
    params = make_params(params_raw, {"s": strategy})
    result = run_train(params, "s", dataset, tmp_path)
    blocks = FAMILIES[arch]
    # trainable: 2 = from the first module of timm's second-last block on (the head included)
    trained = result["phases"][0]["trainable_modules"]
    assert trained[0] == blocks[-2].split(" + ")[0] and CLASSIFIER[arch].split(".")[0] in {
        t.split(".")[0] for t in trained
    }

    ckpt = read_checkpoint(tmp_path / "m.pt")
    cfg = get_pretrained_cfg(arch)
    assert ckpt["transform"]["mean"] == list(cfg.mean) and ckpt["transform"]["std"] == list(cfg.std)
    assert ckpt["transform"]["resize_size"] == round(32 / cfg.crop_pct)

    model, _ = models.load_checkpoint(tmp_path / "m.pt")
    assert models.head_name(model) == CLASSIFIER[arch]
    assert models.blocks(model, arch) == blocks

    clean, split = dataset
    metrics = evaluate(
        model_path=tmp_path / "m.pt",
        clean_dir=clean,
        split_dir=split,
        metrics_path=tmp_path / "eval.json",
        confusion_path=tmp_path / "confusion.json",
        settings=params.evaluate,
        seed=0,
        threads=1,
    )
    assert 0 <= metrics["accuracy"] <= 1 and (tmp_path / "eval.json").is_file()

    diffs = export.export(
        model_path=tmp_path / "m.pt", strategy="s", out=tmp_path / "export", settings=Export()
    )
    assert diffs and all(d <= Export().tolerance for d in diffs.values())
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "model.onnx",
        "model.onnx.json",
        "model.torchscript.pt",
        "model.torchscript.pt.json",
    ]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_trainable_count_selects_from_that_block_on(arch):
    model = models.build(arch, 3, "none", image_size=32)
    blocks = models.blocks(model, arch)
    names = [n for n, _ in model.named_parameters()]
    counts = []
    for n in range(1, len(blocks) + 1):
        info = models.set_trainable(model, arch, n)
        first = blocks[-n].split(" + ")[0]
        start = next(i for i, p in enumerate(names) if p.startswith(first + "."))
        on = [p for p, t in model.named_parameters() if t.requires_grad]
        assert on == names[start:]  # everything from that block on, in forward order
        counts.append(info["trainable_params"])
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    with pytest.raises(StageError, match=rf"has {len(blocks)} blocks"):
        models.set_trainable(model, arch, len(blocks) + 1)


def test_a_vit_is_built_for_the_image_size_and_a_timm_prefix_picks_timm():
    vit = models.build("test_vit", 3, "none", image_size=48).eval()
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    assert models.crop_pct("test_vit") == 0.95 and models.norm_stats("test_vit")[0] == [0.5] * 3
    # the built-in resnet18 is torchvision's; timm:resnet18 is timm's (its own crop fraction)
    assert not hasattr(models.backbone("resnet18", "none"), "pretrained_cfg")
    assert models.backbone("timm:resnet18", "none").pretrained_cfg["architecture"] == "resnet18"
    assert models.crop_pct("resnet18") == 0.875 and models.crop_pct("timm:resnet18") == 0.95


# ---- weights files ---------------------------------------------------------------------------


def _backbone_state(arch: str, seed: int, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return models.backbone(arch, "none", **kw).state_dict()


def _without_head(state: dict, head: str) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}


def test_a_safetensors_file_is_loaded_into_the_backbone(tmp_path):
    state = _backbone_state("convnext_atto", seed=1)
    save_file(state, tmp_path / "convnext.safetensors")
    model = models.build("convnext_atto", 5, str(tmp_path / "convnext.safetensors"))
    got = model.state_dict()
    for name, tensor in _without_head(state, "head.fc").items():
        assert torch.equal(got[name], tensor), name
    assert got["head.fc.weight"].shape == (5, state["head.fc.weight"].shape[1])


def test_a_torch_checkpoint_with_another_head_and_ddp_prefixes_loads(tmp_path):
    torch.manual_seed(2)
    trained = models.build("resnet10t", 10, "none")  # fine-tuned elsewhere on 10 classes
    state = {"module." + k: v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "r10.pth")
    model = models.build("resnet10t", 4, str(tmp_path / "r10.pth"))
    got = model.state_dict()
    for name, tensor in _without_head(trained.state_dict(), "fc").items():
        assert torch.equal(got[name], tensor), name
    assert got["fc.weight"].shape[0] == 4


def test_a_vit_file_at_another_size_is_resampled_by_timm(tmp_path):
    state = _backbone_state("test_vit", seed=3)  # the model's own 160 px grid
    save_file(state, tmp_path / "vit.safetensors")
    model = models.build("test_vit", 3, str(tmp_path / "vit.safetensors"), image_size=64)
    got = model.state_dict()
    assert got["pos_embed"].shape != state["pos_embed"].shape
    assert torch.equal(got["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_a_file_of_another_architecture_names_the_file_and_tensor(tmp_path):
    save_file(_backbone_state("resnet10t", seed=0), tmp_path / "r10.safetensors")
    with pytest.raises(StageError, match=r"r10\.safetensors: does not fit: tensor 'conv1\.weight'"):
        models.build("timm:resnet18", 3, str(tmp_path / "r10.safetensors"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_unsafe_or_foreign_weights_files_are_refused_never_loaded(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil()}, evil)
    with pytest.raises(StageError, match=r"evil\.pt: refused: it holds Python objects"):
        models.build("resnet10t", 3, str(evil))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(StageError, match=r"plain\.pkl: not a weights file"):
        models.build("resnet10t", 3, str(plain))
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listing)
    with pytest.raises(StageError, match=r"list\.pt: not a state dict"):
        models.build("resnet10t", 3, str(listing))
    torn = tmp_path / "torn.safetensors"
    save_file(_backbone_state("test_vit", seed=0), torn)
    torn.write_bytes(torn.read_bytes()[:1000])
    with pytest.raises(StageError, match=r"torn\.safetensors: not a readable safetensors file"):
        models.build("test_vit", 3, str(torn))
    with pytest.raises(StageError, match=r"missing\.safetensors: weights file not found"):
        models.build("test_vit", 3, str(tmp_path / "missing.safetensors"))


def test_training_from_a_weights_file_records_its_digest(dataset, params_raw, tmp_path):
    import hashlib

    save_file(_backbone_state("test_vit", seed=4), tmp_path / "vit.safetensors")
    file = str(tmp_path / "vit.safetensors")
    strategy = {"arch": "test_vit", "weights": file, "trainable": "head", "epochs": 1}
    run_train(make_params(params_raw, {"s": strategy}), "s", dataset, tmp_path)
    ckpt = read_checkpoint(tmp_path / "m.pt")
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    assert ckpt["strategy"]["weights"] == file
    assert ckpt["strategy"]["weights_sha256"] == digest


# ---- names and offline ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, closest",
    [("convnext_atoo", "convnext_atto"), ("resnet19", "resnet18"), ("vit_tiny_patch16", "vit_")],
)
def test_unknown_names_are_refused_with_the_closest_known(arch, closest):
    with pytest.raises(StageError, match=rf"unknown arch '{arch}' \(closest: [^)]*{closest}"):
        archs.check(arch, "none")


def test_validate_refuses_an_unknown_timm_name_and_a_missing_weights_file(params_raw, tmp_path):
    raw = dict(params_raw)
    raw["strategies"] = {
        **raw["strategies"],
        "typo": {"arch": "convnext_atoo", "weights": "none", "epochs": 1},
        "nofile": {"arch": "convnext_atto", "weights": "weights/atto.safetensors", "epochs": 1},
        "good": {"arch": "convnext_atto", "weights": "none", "epochs": 1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception) as info:
        check(tmp_path / "params.yaml")
    text = str(info.value)
    assert "strategies.typo.arch: unknown arch 'convnext_atoo' (closest: convnext_atto" in text
    assert "strategies.nofile.weights: weights/atto.safetensors: no such file" in text
    assert "strategies.good" not in text


def test_pretrained_without_network_names_the_model_source_and_folder(tmp_path):
    """timm's own download path, with the hub offline and an empty cache: one message that says
    which weights failed, where they come from and where to put them."""
    code = (
        "from transferline import models\n"
        "from transferline.config.errors import StageError\n"
        "try:\n"
        "    models.backbone('convnext_atto', 'pretrained')\n"
        "except StageError as exc:\n"
        "    print('MESSAGE', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    line = next(s for s in proc.stdout.splitlines() if s.startswith("MESSAGE"))
    assert "convnext_atto: pretrained weights could not be loaded from" in line
    assert "timm/convnext_atto.d2_in1k" in line
    assert "weights: <path to the file>" in line and str(tmp_path / "hf" / "hub") in line
