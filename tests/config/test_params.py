"""params.yaml is validated strictly: the shipped file loads, and each kind of mistake stops
with a message that names the key and what is allowed."""

import subprocess
import sys

import pytest
import yaml

from transferline.config import params as P

from helpers import ROOT


def test_shipped_params_load_and_every_strategy_resolves():
    params = P.load(ROOT / "params.yaml")
    assert params.dataset == "demo"
    assert {"scratch", "finetune", "feature_extractor", "partial"} <= set(params.strategies)
    partial = params.strategies["partial"].resolved_phases()
    assert [p.trainable for p in partial] == ["head", 1]
    # a later phase inherits what it does not override
    assert partial[1].optimizer == partial[0].optimizer == "sgd"
    assert partial[1].lr < partial[0].lr


@pytest.mark.parametrize(
    "edit, key, hint",
    [
        (lambda p: p["clean"].update(workerz=2), "clean.workerz", "unknown key"),
        (lambda p: p["train"].update(batch_size="32"), "train.batch_size", "valid integer"),
        (
            lambda p: p["strategies"]["finetune"].update(lr=-1),
            "strategies.finetune.lr",
            "greater than 0",
        ),
        (
            lambda p: p["strategies"]["scratch"].update(trainable="heads"),
            "strategies.scratch.trainable",
            "all | head",
        ),
        (
            lambda p: p["strategies"]["finetune"].update(optimizer="lion"),
            "strategies.finetune.optimizer",
            "'sgd', 'adam' or 'adamw'",
        ),
        (lambda p: p["split"].update(val=0.5, test=0.45), "split", "at least 10% for train"),
        (lambda p: p.update(dataset="imagenet"), "dataset", "choose one of"),
        (
            lambda p: p["datasets"]["hymenoptera"]["archives"][0].update(sha256="abc"),
            "datasets.hymenoptera.archives.0.sha256",
            "pattern",
        ),
        (
            lambda p: p["strategies"]["scratch"].update(cache_features=True),
            "strategies.scratch",
            "cache_features needs a phase with `trainable: head`",
        ),
        (
            lambda p: p["strategies"]["partial"]["phases"][0].update(arch="resnet18"),
            "strategies.partial.phases.0.arch",
            "unknown key",
        ),
        (
            lambda p: p["strategies"]["finetune"].update(momentum=0.0, nesterov=True),
            "strategies.finetune",
            "nesterov: true needs momentum > 0",
        ),
        # the phase sets nesterov and inherits momentum 0 from the entry: caught before any stage
        (
            lambda p: (
                p["strategies"]["partial"].update(momentum=0.0),
                p["strategies"]["partial"]["phases"][0].update(nesterov=True),
            ),
            "strategies.partial",
            "phases.0: nesterov: true needs momentum > 0",
        ),
    ],
)
def test_invalid_values_name_the_key(params_raw, edit, key, hint):
    edit(params_raw)
    with pytest.raises(P.ParamsError) as exc:
        P.validate(params_raw)
    message = str(exc.value)
    assert f"  {key}:" in message or f"{key}:" in message, message
    assert hint in message, message


def test_nesterov_without_momentum_is_fine_for_other_optimizers(params_raw):
    params_raw["strategies"]["finetune"].update(optimizer="adam", momentum=0.0, nesterov=True)
    P.validate(params_raw)


def _defaults_and_values(model: type[P.Section], shipped: dict, where: str):
    """(key, code default, params.yaml value) for every key with a default, recursively."""
    for name, field in model.model_fields.items():
        if name not in shipped or field.is_required():
            continue
        default, value = field.get_default(call_default_factory=True), shipped[name]
        if isinstance(default, P.Section):
            yield from _defaults_and_values(type(default), value, f"{where}{name}.")
        else:
            yield f"{where}{name}", default, value


# the project's own tolerance patterns; without a `check:` section there are none, on purpose
NO_SHIPPED_DEFAULT = {"check.tolerances", "check.ignore", "check.counted_on"}


def test_code_defaults_equal_the_shipped_params():
    """A key left out of params.yaml must behave as the shipped file says."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    checked = []
    for section in (
        "download",
        "extract",
        "clean",
        "split",
        "runtime",
        "train",
        "evaluate",
        "report",
        "check",
    ):
        model = type(P.Params.model_fields[section].get_default())
        for key, default, value in _defaults_and_values(model, shipped[section], f"{section}."):
            if key in NO_SHIPPED_DEFAULT:
                continue
            checked.append(key)
            assert default == value, f"{key}: code default {default!r}, params.yaml {value!r}"
    assert {"train.workers", "evaluate.workers", "train.augment.hflip"} <= set(checked)


def test_a_dataset_needs_exactly_one_source(params_raw):
    params_raw["datasets"]["demo"]["archives"] = [{"url": "x.zip"}]
    with pytest.raises(P.ParamsError, match="exactly one of `generate:` or `archives:`"):
        P.validate(params_raw)


def test_unknown_strategy_lists_the_known_ones():
    params = P.load(ROOT / "params.yaml")
    with pytest.raises(P.ParamsError, match="no strategy 'finetun'.*'finetune'"):
        params.strategy("finetun")


def test_stage_exits_2_before_work_on_bad_params(tmp_path, params_raw):
    params_raw["seed"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.split",
            "--clean",
            "clean",
            "--out",
            "split",
            "--metrics",
            "split.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "seed: Input should be greater than or equal to 0 (got -1)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no work done


@pytest.mark.parametrize(
    "dataset, setting, expected",
    [
        ("demo", "auto", 96),  # each preset's own size
        ("cifar10", "auto", 32),
        ("hymenoptera", "auto", 224),
        ("cifar10", 64, 64),  # a number overrides the preset
    ],
)
def test_image_size_auto_follows_the_dataset(params_raw, dataset, setting, expected):
    params_raw.update(dataset=dataset)
    params_raw["train"]["image_size"] = setting
    assert P.validate(params_raw).image_size == expected


def test_image_size_of_a_dataset_without_one_is_224_and_bad_sizes_are_refused(params_raw):
    params_raw["datasets"]["mine"] = {"archives": [{"url": "/data/mine"}]}
    params_raw["dataset"] = "mine"
    assert P.validate(params_raw).image_size == 224
    params_raw["train"]["image_size"] = 8
    with pytest.raises(P.ParamsError, match="train.image_size"):
        P.validate(params_raw)


def test_validate_stage_checks_archs_without_importing_torch(tmp_path):
    """validate runs before every `dvc repro`; importing torch would be most of its time. The
    shipped params.yaml names built-in archs only: no torch. (A name that is not built in is
    looked up in timm's registry, which imports torch, and refused with the closest names:
    tests/test_pipeline.py's "unknown arch" case, through the stage's command.)"""
    good = tmp_path / "good.yaml"
    good.write_text((ROOT / "params.yaml").read_text())
    probe = (
        "import sys\n"
        "from stages import validate\n"
        "validate.validate(sys.argv[1], sys.argv[2])\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(good), str(tmp_path / "good.ok")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ran.splitlines() == ["False False"]
    assert (tmp_path / "good.ok").is_file()
