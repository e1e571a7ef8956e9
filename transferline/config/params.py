"""params.yaml: load it and validate it strictly, so a typo stops a stage before any work.

Every stage calls `load()` in its `main()`. An unknown key, a wrong type, an out-of-range value or
settings that contradict each other raise `ParamsError` (transferline/config/errors.py) whose
message names each bad key and what is allowed; `run_main` turns it into a message and exit status
2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from transferline.config.errors import ParamsError

PARAMS_FILE = "params.yaml"

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
SplitName = Literal["train", "val", "test"]
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"  # runtime.device: auto | cpu | cuda | cuda:N
# Keys that change how fast a stage runs, never its outputs: dvc.yaml tracks none of them, so
# raising one re-runs nothing (tests/test_dvc_yaml.py holds both to this list).
SPEED_ONLY = ("clean.workers", "train.workers", "train.resume", "evaluate.workers")
# How a dataset's archives become class folders (keys of transferline.data.formats.CONVERTERS,
# plus the default `folders`: they already are class folders).
DatasetFormat = Literal["folders", "cifar10", "flowers102"]


class Section(BaseModel):
    # extra=forbid: a misspelt key is an error, not a silently ignored setting.
    # strict: "3" is not 3 and 1 is not True.
    # allow_inf_nan=False: no setting means anything at .inf or .nan (an lr of .inf trains to
    # NaN, a backoff of .inf overflows at the first retry), so every float must be finite.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# ---- datasets -------------------------------------------------------------------------------


class Generate(Section):
    classes: int = Field(3, ge=3, le=6)
    per_class: int = Field(160, ge=10, le=5000)
    size: int = Field(96, ge=32, le=128)


class Archive(Section):
    url: str = Field(min_length=1)
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$")
    split: Optional[SplitName] = None


ImageSize = Annotated[int, Field(ge=16, le=1024)]  # px, square side fed to the network
DEFAULT_IMAGE_SIZE = 224  # what ImageNet backbones were trained at


class Dataset(Section):
    generate: Optional[Generate] = None
    archives: Optional[list[Archive]] = Field(None, min_length=1)
    format: DatasetFormat = "folders"
    image_size: Optional[ImageSize] = None  # its own size, used when train.image_size is auto

    @model_validator(mode="after")
    def _one_source(self) -> "Dataset":
        if (self.generate is None) == (self.archives is None):
            raise ValueError("give exactly one of `generate:` or `archives:`")
        return self

    @model_validator(mode="after")
    def _format_needs_archives(self) -> "Dataset":
        if self.format == "folders":
            return self
        if self.archives is None:
            raise ValueError(
                f"`format: {self.format}` converts downloaded archives; "
                "give `archives:` (not `generate:`)"
            )
        if any(a.split is not None for a in self.archives):
            raise ValueError(
                f"`format: {self.format}` takes its splits from the official "
                "files; remove `split:` from its archives"
            )
        return self


# ---- data stages ----------------------------------------------------------------------------


MAX_BACKOFF = 600.0  # s: the longest wait between two download attempts


class Download(Section):
    timeout: float = Field(30.0, gt=0, le=3600)
    retries: int = Field(4, ge=0, le=20)
    backoff: float = Field(1.0, ge=0, le=MAX_BACKOFF)  # doubled after each retry, up to the max


class Extract(Section):
    max_total_bytes: int = Field(50_000_000_000, gt=0)
    max_ratio: Positive = 250.0
    max_members: int = Field(2_000_000, gt=0)


class Clean(Section):
    max_short_side: int = Field(256, ge=16, le=4096)
    min_side: int = Field(16, ge=1)
    max_pixels: int = Field(89_478_485, gt=0)
    jpeg_quality: int = Field(95, ge=50, le=100)
    workers: int = Field(2, ge=1, le=256)


class Split(Section):
    val: Fraction = 0.15
    test: Fraction = 0.15
    # near-duplicates: images whose 64-bit difference hashes differ in at most this many bits
    # are one picture (carved into one split; reported when shipped across splits); None = off
    near_duplicate_bits: Optional[int] = Field(4, ge=0, le=32)

    @model_validator(mode="after")
    def _room_for_train(self) -> "Split":
        if self.val + self.test >= 0.9:
            raise ValueError("val + test must leave at least 10% for train")
        return self


# ---- training -------------------------------------------------------------------------------


class Augment(Section):
    crop_scale: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.6, 1.0], min_length=2, max_length=2
    )
    hflip: Probability = 0.5
    rotation: float = Field(10.0, ge=0, le=180)
    color_jitter: float = Field(0.2, ge=0, le=1)
    trivial_augment: bool = False  # torchvision's TrivialAugmentWide after the crop and flip
    random_erasing: Probability = 0.0  # probability of erasing one random box (RandomErasing)
    mixup: float = Field(0.0, ge=0, le=10)  # MixUp's Beta(alpha, alpha); 0 = off
    cutmix: float = Field(0.0, ge=0, le=10)  # CutMix's Beta(alpha, alpha); 0 = off

    @model_validator(mode="after")
    def _ordered(self) -> "Augment":
        if self.crop_scale[0] > self.crop_scale[1]:
            raise ValueError("crop_scale is [min, max] with min <= max")
        return self


class Runtime(Section):
    """Where and how models run: shared by train, evaluate and predict."""

    device: str = Field("auto", pattern=DEVICE_PATTERN)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    deterministic: bool = True


def _check_image_size(value: Any) -> Any:
    if value == "auto" or (type(value) is int and 16 <= value <= 1024):
        return value
    raise ValueError("must be auto (the dataset entry's image_size) or px in 16..1024")


# auto | px. Like Trainable: one check and one message, not one per union member (whose
# pydantic tags, `literal['auto']`, would otherwise show up in the key).
TrainImageSize = Annotated[Union[Literal["auto"], int], PlainValidator(_check_image_size)]


class Train(Section):
    image_size: TrainImageSize = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    workers: int = Field(0, ge=0, le=64)
    select: Literal["val_acc", "val_loss"] = "val_acc"
    patience: int = Field(4, ge=0)
    target_acc: Probability = 1.0
    seeds: int = Field(1, ge=1, le=20)
    resume: bool = True
    nproc: int = Field(1, ge=1, le=64)
    balance: Literal["none", "loss", "sampler"] = "none"  # class-weighted loss | weighted sampler
    augment: Augment = Augment()

    @model_validator(mode="after")
    def _batch_splits(self) -> "Train":
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} must split evenly over nproc "
                f"{self.nproc} processes (it is the global batch)"
            )
        return self


class Schedule(Section):
    name: Literal["none", "step", "cosine", "plateau"] = "none"
    step_size: int = Field(7, ge=1)  # epochs between decays (step)
    gamma: float = Field(0.1, gt=0, le=1)  # decay factor (step, plateau)
    patience: int = Field(1, ge=0)  # epochs without a lower val loss before a decay (plateau)


def _check_trainable(value: Any) -> Any:
    ok = (
        value in ("all", "head")
        or (type(value) is int and value >= 1)
        or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
    )
    if not ok:
        raise ValueError(
            "must be all | head | N >= 1 (last N blocks + head) | a list of module names"
        )
    return value


# all | head | N (last N blocks + head) | explicit module names. The union documents the type;
# _check_trainable alone validates it (one check, one message instead of one per union member).
Trainable = Annotated[
    Union[Literal["all", "head"], int, list[str]], PlainValidator(_check_trainable)
]


class PhaseOverride(Section):
    """Keys a later phase may change; unset ones carry over from the phase before."""

    trainable: Optional[Trainable] = None
    optimizer: Optional[Literal["sgd", "adam", "adamw"]] = None
    lr: Optional[Positive] = None
    backbone_lr_mult: Optional[float] = Field(None, ge=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = Field(None, ge=0)
    schedule: Optional[Schedule] = None
    epochs: Optional[int] = Field(None, ge=1)
    warmup_epochs: Optional[int] = Field(None, ge=0)
    label_smoothing: Optional[float] = Field(None, ge=0, le=0.5)
    clip_grad: Optional[float] = Field(None, ge=0)
    layer_decay: Optional[float] = Field(None, gt=0, le=1)
    ema_decay: Optional[float] = Field(None, ge=0, lt=1)
    freeze_bn: Optional[bool] = None


class Phase(Section):
    """One fully resolved training phase."""

    trainable: Trainable = "all"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Positive = 0.01
    backbone_lr_mult: float = Field(1.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Schedule = Schedule()
    epochs: int = Field(10, ge=1)
    warmup_epochs: int = Field(0, ge=0)  # lr rises linearly to `lr` over these, then `schedule`
    label_smoothing: float = Field(0.0, ge=0, le=0.5)  # of the training loss (val loss: plain)
    clip_grad: float = Field(0.0, ge=0)  # max L2 norm of the gradients; 0 = off
    # lr x layer_decay per backbone block counted back from the last one; 1 = off
    layer_decay: float = Field(1.0, gt=0, le=1)
    # EMA of the weights (timm ModelEmaV3, per step, its decay warm-up capped here); 0 = off
    ema_decay: float = Field(0.0, ge=0, lt=1)
    # batch norm keeps the pretrained running statistics (eval mode) while the rest trains
    freeze_bn: bool = False

    @model_validator(mode="after")
    def _warmup_fits(self) -> "Phase":
        if self.warmup_epochs and self.schedule.name == "plateau":
            raise ValueError(
                "warmup_epochs needs schedule none, step or cosine (a plateau schedule "
                "reacts to the val loss and does not chain after a warmup)"
            )
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs} must be below epochs {self.epochs}"
            )
        return self

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "Phase":
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0")
        return self


class Head(Section):
    """The new classification head: [Dropout] -> (Linear -> ReLU -> [Dropout]) per hidden width
    -> Linear. The default (no hidden layer, no dropout) is one nn.Linear."""

    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field([], max_length=4)
    dropout: float = Field(0.0, ge=0, lt=1)  # probability, before each Linear of the head


class Strategy(Phase):
    arch: str = Field(min_length=1)
    # pretrained | none | the path of a weights file (safetensors or a PyTorch state dict)
    weights: str = Field("pretrained", min_length=1)
    head: Head = Head()
    cache_features: bool = False
    phases: list[PhaseOverride] = []

    def resolved_phases(self) -> list[Phase]:
        """The entry's own settings as phase 1, then each override applied on the one before."""
        phase = Phase(**{k: getattr(self, k) for k in Phase.model_fields})
        out = [phase]
        for k, override in enumerate(self.phases):
            try:
                phase = Phase.model_validate(
                    {**phase.model_dump(), **override.model_dump(exclude_none=True)}
                )
            except ValidationError as exc:  # a combination only this phase has (nesterov, ...)
                msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise ValueError(f"phases.{k}: {msgs}") from None
            out.append(phase)
        return out

    @model_validator(mode="after")
    def _phases_consistent(self) -> "Strategy":
        phases = self.resolved_phases()  # each phase checked with the settings it inherits
        if self.cache_features and all(p.trainable != "head" for p in phases):
            raise ValueError(
                "cache_features needs a phase with `trainable: head` (its head trains on "
                "features computed once; phases that train the backbone train on images)"
            )
        return self


# ---- evaluate / report ----------------------------------------------------------------------


class Evaluate(Section):
    batch_size: int = Field(64, ge=1, le=4096)
    workers: int = Field(0, ge=0, le=64)
    tta_flip: bool = True
    top_k: int = Field(5, ge=2)
    top_losses: int = Field(12, ge=1, le=1000)  # test images with the highest loss, kept


class Report(Section):
    gallery: int = Field(16, ge=1, le=100)
    augment_samples: int = Field(16, ge=1, le=100)


class Select(Section):
    """How the best strategy is chosen: on validation, never on test."""

    by: Literal["val_acc", "val_loss"] = "val_acc"


class Predict(Section):
    images: Optional[str] = Field(None, min_length=1)  # folder of unlabelled images, or None
    demo_images: int = Field(8, ge=0, le=1000)  # fresh demo images (generated datasets only)
    top_k: int = Field(3, ge=1, le=1000)
    tta: bool = False
    gallery: int = Field(16, ge=1, le=100)


class Export(Section):
    opset: int = Field(17, ge=13, le=20)  # ONNX opset (the TorchScript-based exporter)
    tolerance: float = Field(1e-4, gt=0, le=0.1)


class Check(Section):
    """Tolerances for `make check` (transferline/tools/check.py)."""

    data_stages: list[str] = ["download", "extract", "clean", "split"]
    images: int = Field(4, ge=0)  # a score counted on images may move by this many images
    counts: str = Field("metrics/split.json", min_length=1)  # where the split's counts are
    counted_on: dict[str, SplitName] = {}  # "<file>:<key>" pattern -> the split it counts
    tolerance: float = Field(0.02, ge=0)
    tolerances: dict[str, Annotated[float, Field(ge=0)]] = {}
    ignore: list[str] = []


class Params(Section):
    seed: int = Field(0, ge=0, lt=2**32)
    threads: int = Field(2, ge=1, le=256)
    runtime: Runtime = Runtime()
    datasets: dict[str, Dataset] = Field(min_length=1)
    dataset: str  # after `datasets`, so its check can see the entries
    download: Download = Download()
    extract: Extract = Extract()
    clean: Clean = Clean()
    split: Split = Split()
    train: Train = Train()
    strategies: dict[str, Strategy] = Field(min_length=1)
    evaluate: Evaluate = Evaluate()
    report: Report = Report()
    select: Select = Select()
    predict: Predict = Predict()
    export: Export = Export()
    check: Check = Check()

    @field_validator("dataset")
    @classmethod
    def _dataset_known(cls, value: str, info: ValidationInfo) -> str:
        entries = info.data.get("datasets")
        if entries is not None and value not in entries:
            raise ValueError(
                f"{value!r} is not an entry of `datasets:`; choose one of {sorted(entries)}"
            )
        return value

    @property
    def active_dataset(self) -> Dataset:
        return self.datasets[self.dataset]

    @property
    def image_size(self) -> int:
        """px fed to the network: train.image_size, or with `auto` the dataset's own size
        (DEFAULT_IMAGE_SIZE when its entry names none)."""
        if self.train.image_size != "auto":
            return self.train.image_size
        return self.active_dataset.image_size or DEFAULT_IMAGE_SIZE

    def strategy(self, name: str) -> Strategy:
        if name not in self.strategies:
            raise ParamsError(
                f"{PARAMS_FILE}: no strategy {name!r} under `strategies:`; "
                f"choose one of {sorted(self.strategies)}"
            )
        return self.strategies[name]


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt, or not supported here)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return f"  {key}: {msg}"


def validate(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate an already-parsed params mapping (tests and `load` share this)."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        # union members each report their own failure; keep one line per key
        lines = list(dict.fromkeys(_describe(e) for e in exc.errors()))
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def add_option(parser: argparse.ArgumentParser) -> None:
    """Every stage's `--params FILE` (default params.yaml), for tests and one-off runs."""
    parser.add_argument(
        "--params",
        type=Path,
        default=Path(PARAMS_FILE),
        help="params file to validate and use (default: %(default)s)",
    )


def load(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r});"
            " save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raise ParamsError(f"{path}: is empty; start from the shipped params.yaml (git checkout)")
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path}: must be a mapping of sections (seed:, datasets:, strategies:, ...), "
            f"not a {type(raw).__name__}"
        )
    return validate(raw, str(path))
