"""Models: backbones by name (registry), the new head (heads), which parameters train
(trainable), checkpoints, exported files (export) and anything ready to predict (bundle).
The names below are the package's interface; each lives in the module named beside it."""

from transferline.models.checkpoints import (
    CHECKPOINT_KEYS,
    cpu_state,
    load_checkpoint,
    save_checkpoint,
)
from transferline.models.heads import Head, head_name, head_spec, new_head, swap_head
from transferline.models.registry import (
    ARCHS,
    HALF,
    ArchSpec,
    backbone,
    blocks,
    build,
    crop_pct,
    norm_stats,
    spec,
)
from transferline.models.trainable import set_trainable, train_mode

__all__ = [
    "ARCHS",
    "CHECKPOINT_KEYS",
    "HALF",
    "ArchSpec",
    "Head",
    "backbone",
    "blocks",
    "build",
    "crop_pct",
    "cpu_state",
    "head_name",
    "head_spec",
    "load_checkpoint",
    "new_head",
    "norm_stats",
    "save_checkpoint",
    "set_trainable",
    "spec",
    "swap_head",
    "train_mode",
]
