"""Grad-CAM (transferline/models/cam.py) and `transferline predict --cam`: the heat map follows
the evidence of a network whose evidence we know, covers the image, and the command writes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferline import models
from transferline.cli import main as cli
from transferline.config.errors import StageError
from transferline.models.cam import grad_cam, target_layer

from helpers import checkpoint_meta, make_image_folder


def _bright_pixel_detector() -> nn.Module:
    """cnn1 whose class-0 score is the mean brightness of the red channel: every layer passes
    red through unchanged (1x1-like taps, identity BN), the head reads that channel alone."""
    model = models.build("cnn1", 2, "none").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        stem, block = model.stem[0], model.features[0][0]
        stem.weight[0, 0, 1, 1] = 1.0  # red -> channel 0, centre tap
        block.weight[0, 0, 1, 1] = 1.0  # channel 0 -> channel 0
        for bn in (model.stem[1], model.features[0][1]):
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        model.head.weight[0, 0] = 1.0  # class 0 = mean of channel 0
    return model


def test_the_heat_map_is_where_the_evidence_is():
    model = _bright_pixel_detector()
    x = torch.zeros(2, 3, 64, 64)
    x[0, 0, :24, :24] = 1.0  # a red square top left
    x[1, 0, 40:, 40:] = 1.0  # and bottom right
    maps = grad_cam(model, "cnn1", x, [0, 0])
    assert maps.shape == (2, 64, 64)
    assert float(maps.min()) >= 0 and float(maps.max()) == pytest.approx(1.0)
    assert maps[0, :24, :24].mean() > 5 * maps[0, 40:, 40:].mean()
    assert maps[1, 40:, 40:].mean() > 5 * maps[1, :24, :24].mean()
    assert target_layer(model, "cnn1") is model.features[0]


def test_a_transformer_is_refused_with_the_reason():
    vit = models.build("test_vit", 2, "none", image_size=32)
    with pytest.raises(StageError, match="tokens, not a feature map"):
        grad_cam(vit, "test_vit", torch.zeros(1, 3, 32, 32), [0])


def test_predict_cam_writes_a_heat_map_grid(tmp_path, capsys):
    torch.manual_seed(0)
    model = models.build("cnn2", 3, "none")
    models.save_checkpoint(tmp_path / "m.pt", model, checkpoint_meta("cnn2", ("a", "b", "c"), 32))
    folder = make_image_folder(tmp_path / "photos", classes=("x",), per_class=3, size=48)
    out = tmp_path / "cam.png"
    code = cli(["predict", str(folder), "--model", str(tmp_path / "m.pt"), "--cam", str(out)])
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = out.read_bytes()
    cli(["predict", str(folder), "--model", str(tmp_path / "m.pt"), "--cam", str(out)])
    assert out.read_bytes() == first  # the same heat maps, the same bytes
    capsys.readouterr()
