"""transferline/engine/runtime.py: device and precision choice, and the autocast code path a GPU
runs, exercised on CPU with bf16 (training and inference)."""

from __future__ import annotations

import pytest
import torch

from transferline.config.errors import StageError
from transferline.engine import runtime
from transferline.engine.inference import predict_probs


def test_cpu_defaults_are_fp32_channels_last_deterministic():
    rt = runtime.resolve(device="cpu")
    assert (rt.device, rt.amp_dtype, rt.channels_last, rt.deterministic) == (
        torch.device("cpu"),
        None,
        True,
        True,
    )
    assert rt.precision == "fp32"
    x = rt.batch(torch.zeros(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "use auto, cpu, cuda or cuda:N"),
        ("cuda:0", "no CUDA device is visible"),
    ],
)
def test_bad_or_missing_devices_are_clear_errors(device, message):
    if torch.cuda.is_available() and device.startswith("cuda"):
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(StageError, match=message):
        runtime.resolve(device=device)


def test_fp16_on_cpu_is_refused_and_auto_is_fp32():
    with pytest.raises(StageError, match="fp16 autocast is for CUDA"):
        runtime.resolve(device="cpu", precision="fp16")
    assert runtime.resolve(device="cpu", precision="auto").amp_dtype is None


def test_bf16_autocast_runs_the_model_in_bf16_and_returns_fp32_probabilities():
    rt = runtime.resolve(device="cpu", precision="bf16")
    seen = []
    conv = torch.nn.Conv2d(3, 4, 3)
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model = torch.nn.Sequential(
        conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )
    rt.place(model)
    probs = predict_probs(model, [(torch.randn(5, 3, 8, 8), None)], rt)
    assert seen == [torch.bfloat16]
    assert probs.shape == (5, 3) and probs.dtype.name == "float64"
    assert abs(probs.sum(axis=1) - 1).max() < 1e-12


def test_torch_state_restores_threads_and_determinism():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with runtime.torch_state(runtime.resolve(device="cpu", deterministic=False), seed=1, threads=1):
        assert torch.get_num_threads() == 1
        assert not torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
