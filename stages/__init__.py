"""The DVC entry points: one thin module per `dvc.yaml` stage.

Stages (one per `dvc.yaml` stage; run as `python -m stages.<name>`; never import each other):

    validate   data/params.ok    check the whole params.yaml before anything else runs
    download   data/raw          fetch the dataset's archives, or generate the demo
    extract    data/extracted    unpack them safely
    clean      data/clean        decode, reject with a reason, normalise
    split      data/split        seeded, stratified train/val/test lists
    train      models/<S>.pt     train one strategy
    curves     plots/curves.tsv  every strategy's training curves in one table (the overlays)
    evaluate   metrics/eval/<S>  score it on the test split (single crop and TTA)
    select     metrics/best.json the best strategy, chosen on validation
    predict    reports/predictions.csv  the best model on unlabelled images
    export     export/           the best model as ONNX and TorchScript, with sidecars
                                 (the same code as `transferline export`)
    report     reports/          one comparison of every strategy

Every stage module has `main(argv=None)`: argparse over `argv` (the paths dvc.yaml passes) plus
`--params FILE` (default params.yaml), run by `transferline.config.errors.run_main(main)`. It
parses its arguments, loads params.yaml and makes one call into the library, the `transferline`
package, where all the work lives (transferline/__init__.py maps it).
"""
