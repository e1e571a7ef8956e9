"""The pipeline's code: eleven stage entry points and the shared modules they import.

Stages (one per `dvc.yaml` stage; run as `python -m stages.<name>`; never import each other):

    validate   data/params.ok    check the whole params.yaml before anything else runs
    download   data/raw          fetch the dataset's archives, or generate the demo
    extract    data/extracted    unpack them safely
    clean      data/clean        decode, reject with a reason, normalise
    split      data/split        seeded, stratified train/val/test lists
    train      models/<S>.pt     train one strategy
    evaluate   metrics/eval/<S>  score it on the test split (single crop and TTA)
    select     metrics/best.json the best strategy, chosen on validation
    predict    reports/predictions.csv  the best model on unlabelled images (also a CLI)
    export     export/           the best model as ONNX and TorchScript, with sidecars
    report     reports/          one comparison of every strategy

Every stage module has a worker function (explicit paths and settings in, what it measured out)
and `main(argv=None)`: argparse over `argv` (the paths dvc.yaml passes) plus `--params FILE`
(default params.yaml), ended by `errors.run_main(main)`.

Shared modules (imported by stages, never import a stage; each is in its users' `deps`):

    params      params.yaml schema and strict validation
    errors      StageError, ParamsError, run_main (one line and exit 2; Ctrl-C: exit 130)
    files       staged_dir (build a folder beside its place, swap it in), atomic file writes
    demo        the generated demo dataset (used by download)
    data        split lists, the image Dataset, seeded DataLoaders
    transforms  decoding, train/eval/TTA transforms, normalisation constants
    archs       the arch names and which have ImageNet weights (no torch: validate uses it)
    models      backbones registry, head swap, trainable selection, checkpoints
    seeds       mean ± std over `train.seeds` runs, one shape for train and evaluate
    formats     official dataset layouts (CIFAR-10 pickles, Oxford Flowers 102) to class folders
    runtime     device, precision, channels_last, threads, determinism (train, evaluate, predict)
    inference   class probabilities over batches, single views or TTA (evaluate, predict)
    loop        the training engine: phases, epochs, early stopping, resumable state
    images      one image file's bytes to what the network sees (clean and predict)
    figures     deterministic PNG figures (report and predict)
    bundle      a checkpoint, an exported model or an ImageNet backbone, ready to predict
    distributed several training processes (DDP under torchrun's launcher)
    workers_ignore_sigint  preloaded by clean's forkserver: its workers ignore Ctrl-C from birth
"""
