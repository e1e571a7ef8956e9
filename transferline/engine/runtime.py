"""Where and how tensors run: device (with an index), precision, memory format, threads and
determinism, in one place that train, evaluate and predict share.

    rt = runtime.from_params(params.runtime)     # runtime.device / precision / channels_last /
    with runtime.torch_state(rt, seed=0, threads=2):  # deterministic
        model = rt.place(model)
        with rt.autocast():
            out = model(rt.batch(x))

`precision: auto` is bf16 autocast on a CUDA device that supports it (fp16 with a GradScaler on
older ones) and fp32 on CPU; `bf16` on CPU runs the same autocast code path a GPU runs, which
is how the tests exercise it. `deterministic: true` (the default) keeps the byte-identical
contract; `false` lets cuDNN benchmark and pick non-deterministic kernels, for speed.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from transferline.config.errors import StageError
from transferline.config.params import DEVICE_PATTERN
from transferline.engine import distributed

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = plain fp32
    channels_last: bool  # NHWC for 4-D inputs and conv weights
    deterministic: bool  # deterministic kernels, no cuDNN benchmark

    @property
    def precision(self) -> str:
        return {v: k for k, v in _DTYPES.items()}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A fresh scaler for one training run; it does anything only under fp16, whose small
        gradients underflow without loss scaling (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, NHWC when channels_last and it is (N, C, H, W)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def place(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def _device(name: str) -> torch.device:
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise StageError(f"device: {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise StageError(f"device: {name}, but no CUDA device is visible; use auto or cpu")
    device = torch.device("cuda" if name == "auto" else name)
    # one GPU per process under torchrun unless an index is given
    index = device.index if device.index is not None else distributed.world().local_rank
    if index >= torch.cuda.device_count():
        raise StageError(
            f"device: {name}, but only {torch.cuda.device_count()} CUDA device(s) "
            f"are visible (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise StageError(f"precision: {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise StageError("precision: fp16 autocast is for CUDA; on CPU use bf16 or fp32")
        return _DTYPES[precision]
    if device.type != "cuda":
        return None  # CPU: fp32 unless bf16 is asked for (slower than fp32 on most CPUs)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve(
    *,
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    deterministic: bool = True,
) -> Runtime:
    dev = _device(device)
    # channels_last on CPU too: measured ~30% less CPU time per image for EfficientNet-Lite0
    # and ~25% for cnn3 training (oneDNN), no change for resnet18
    return Runtime(dev, _amp_dtype(precision, dev), channels_last, deterministic)


def from_params(runtime_p, *, device: str | None = None) -> Runtime:
    """The runtime params.yaml's `runtime:` section asks for; `device` overrides its device
    (predict's --device)."""
    return resolve(
        device=device or runtime_p.device,
        precision=runtime_p.precision,
        channels_last=runtime_p.channels_last,
        deterministic=runtime_p.deterministic,
    )


@contextlib.contextmanager
def torch_state(rt: Runtime, *, seed: int, threads: int) -> Iterator[None]:
    """Seeded, `threads` CPU threads, deterministic kernels when rt.deterministic; the previous
    settings come back afterwards (tests and benchmarks run several stages in one process)."""
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if rt.device.type == "cuda":
        if rt.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = not rt.deterministic
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # warn_only: a kernel without a deterministic version warns instead of stopping the run
    torch.use_deterministic_algorithms(rt.deterministic, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.backends.cudnn.benchmark = before[3]
