"""transferline: a reproducible transfer-learning pipeline for image classification, run by DVC.

The library the pipeline's stages (stages/, one thin entry point per `dvc.yaml` stage) and the
`transferline` command call. Its subpackages follow the data flow:

    config/    params.yaml's schema and strict validation, the arch names, the errors a user can
               fix (importable without torch: `validate` runs before any other stage)
    outputs/   the files stages hand each other: the one temporary-then-rename rule, the shape
               of a metrics file (mean ± std over seeds), the training curves' tables
    data/      the demo, official formats, the one image decoder, transforms, datasets and
               loaders; download, extract, clean, split
    models/    backbones by name, the new head, which parameters train, checkpoints, exported
               files, anything ready to predict
    engine/    where and how tensors run, several processes, the fit loop and its resume state,
               inference; train, evaluate, select, predict
    report/    deterministic figures and report.md
    tools/     check (make check), compare (metrics diff as markdown), the offline plots page
    commands/  what a user runs by hand: `transferline predict`, `export`, `validate`
"""
