"""transferline.report.document on train/evaluate outputs written by hand into tmp_path, with a tiny
generated clean dataset for the gallery and the augmentation grid."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from transferline.config.errors import StageError
from transferline.config.params import validate
from transferline.outputs import mistakes
from transferline.report.document import confusion_matrix, gallery_records, report

from helpers import ROOT, make_image_folder

CLASSES = ["a", "b", "c"]
# Deliberately not alphabetical: the table must follow params.yaml's order.
STRATEGIES = {
    "zeta": {"arch": "cnn1", "weights": "none", "epochs": 2},
    "alpha": {
        "arch": "efficientnet_lite0",
        "weights": "pretrained",
        "trainable": "head",
        "epochs": 2,
        "phases": [{"trainable": 1, "epochs": 2}],
    },
}
TRAIN = {
    "zeta": {
        "best_epoch": 2,
        "best_val_acc": 0.5,
        "best_val_loss": 1.0,
        "epochs": 2,
        "trainable_params": 1234,
        "total_params": 1234,
    },
    "alpha": {
        "best_epoch": 4,
        "best_val_acc": 0.875,
        "best_val_loss": 0.4,
        "epochs": 4,
        "trainable_params": 3012345,
        "total_params": 3400000,
    },
}
# zeta: test accuracy 0.555556, alpha 0.777778; alpha is also best on validation
EVAL = {
    "zeta": (0.555556, 0.611111, 0.5, 0.54321),
    "alpha": (0.777778, 0.888889, 0.765432, 0.777778),
}  # acc, tta acc, macro F1, bal. acc


def write_split(split_dir: Path, clean_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """classes.json and train/val/test.csv: per class, images 0-2 test, 3 val, 4-5 train."""
    splits = {"train": [], "val": [], "test": []}
    for path in sorted((clean_dir / "images").glob("*/*.jpg")):
        i = int(path.stem)
        name = "test" if i < 3 else "val" if i == 3 else "train"
        splits[name].append(
            (path.relative_to(clean_dir).as_posix(), CLASSES.index(path.parent.name))
        )
    split_dir.mkdir(parents=True)
    (split_dir / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    for name, rows in splits.items():
        with (split_dir / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "label", "class"])
            w.writerows([p, y, CLASSES[y]] for p, y in sorted(rows))
    return splits


def eval_metrics(acc, tta, f1, bal):
    return {
        "accuracy": acc,
        "balanced_accuracy": bal,
        "macro_f1": f1,
        "log_loss": 0.9,
        "tta": {"accuracy": tta, "balanced_accuracy": bal, "macro_f1": f1, "log_loss": 0.8},
    }


def per_class_table(f1: float) -> list[dict]:
    return [
        {"class": c, "precision": 0.5, "recall": 0.25 * (k + 1), "f1": f1, "support": 3}
        for k, c in enumerate(CLASSES)
    ]


def write_outputs(root: Path, name: str, test_rows: list[tuple[str, int]], wrong: int) -> None:
    """metrics/train, plots/train (two phases when the strategy has them), metrics/eval and
    plots/confusion for one strategy; the first `wrong` test images are mispredicted."""
    for sub in (
        "metrics/train",
        "plots/train",
        "metrics/eval",
        "plots/confusion",
        "plots/per_class",
        "plots/mistakes",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "metrics/train" / f"{name}.json").write_text(json.dumps(TRAIN[name]))
    lines = ["epoch\tphase\tlr\ttrain_loss\ttrain_acc\tval_loss\tval_acc"]
    for e in range(1, TRAIN[name]["epochs"] + 1):
        phase = 1 if e <= 2 else 2
        lines.append(
            f"{e}\t{phase}\t{0.01 / e}\t{1.5 / e}\t{0.3 + 0.1 * e}\t{1.6 / e}\t{0.25 + 0.1 * e}"
        )
    (root / "plots/train" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    (root / "metrics/eval" / f"{name}.json").write_text(json.dumps(eval_metrics(*EVAL[name])))
    (root / "plots/per_class" / f"{name}.json").write_text(
        json.dumps(per_class_table(EVAL[name][2]))
    )
    records = [
        {"actual": CLASSES[y], "predicted": CLASSES[(y + (i < wrong)) % 3], "path": p}
        for i, (p, y) in enumerate(test_rows)
    ]
    (root / "plots/confusion" / f"{name}.json").write_text(json.dumps(records))
    # probabilities agreeing with those records: 0.8 on the predicted class, more on later rows
    probs = np.full((len(test_rows), 3), 0.1)
    for i, r in enumerate(records):
        probs[i, CLASSES.index(r["predicted"])] = 0.8 - 0.01 * i
    paths = [p for p, _ in test_rows]
    labels = [y for _, y in test_rows]
    sources = {p: "my photos/" + Path(p).name.replace(".jpg", " (1).jpg") for p in paths}
    why = mistakes.build(probs, labels, paths, CLASSES, 3, sources)
    (root / "plots/mistakes" / f"{name}.json").write_text(json.dumps(why))


def make_inputs(root: Path, params_raw: dict):
    clean = make_image_folder(
        root / "clean" / "images", classes=CLASSES, per_class=6, size=40
    ).parent
    splits = write_split(root / "split", clean)
    for name, wrong in (("zeta", 4), ("alpha", 2)):
        write_outputs(root, name, splits["test"], wrong)
    params_raw["strategies"] = STRATEGIES
    params_raw["train"]["image_size"] = 32
    params_raw["report"] = {"gallery": 5, "augment_samples": 6}
    return root, validate(params_raw)


@pytest.fixture
def inputs(tmp_path, params_raw):
    """The inputs of one report, for a test that changes them or runs the report itself."""
    return make_inputs(tmp_path, params_raw)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One report over the inputs as made (alpha chosen), for the tests that only read it:
    (root, params, what report() returned, report.md's text)."""
    params_raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    root, params = make_inputs(tmp_path_factory.mktemp("report"), params_raw)
    result = run_report(root, params)
    return root, params, result, (root / "reports" / "report.md").read_text()


PREDICTIONS = (
    "file,class,probability,top_k,error\n"
    "demo/photo_000.jpg,b,0.900000,b 0.900000; a 0.100000,\n"
    "demo/broken.jpg,,,,truncated: JPEG data ends before the end-of-image marker\n"
)


def write_choice(root: Path, name: str, by="val_acc") -> None:
    """metrics/best.json as the select stage writes it, and the predict stage's two files."""
    best = {
        "strategy": name,
        "by": by,
        "val_acc": TRAIN[name]["best_val_acc"],
        "val_loss": TRAIN[name]["best_val_loss"],
    }
    (root / "metrics/best.json").write_text(json.dumps(best))
    (root / "predictions.csv").write_text(PREDICTIONS)
    cv2.imwrite(str(root / "predictions.png"), np.full((120, 160, 3), 200, np.uint8))


def run_report(root: Path, params, out="reports", cam: Path | None = None):
    if not (root / "metrics/best.json").exists():
        write_choice(root, "alpha")
    return report(
        clean_dir=root / "clean",
        split_dir=root / "split",
        train_metrics=root / "metrics/train",
        train_plots=root / "plots/train",
        eval_metrics=root / "metrics/eval",
        confusion=root / "plots/confusion",
        per_class=root / "plots/per_class",
        mistakes=root / "plots/mistakes",
        best=root / "metrics/best.json",
        predictions=root / "predictions.csv",
        predictions_gallery=root / "predictions.png",
        out=root / out / "report.md",
        figures=root / out / "figures",
        params=params,
        cam=cam,
    )


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """Body rows of the markdown table whose first header cell is `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_table_has_one_row_per_strategy_in_params_order(written):
    _, _, result, text = written
    rows = table_rows(text, "strategy")
    assert rows == [
        ["zeta", "cnn1", "none", "1,234", "2", "0.5000", "0.5556", "0.6111", "0.5000", "0.5432"],
        [
            "alpha",
            "efficientnet_lite0",
            "pretrained",
            "3,012,345",
            "4",
            "0.8750",
            "0.7778",
            "0.8889",
            "0.7654",
            "0.7778",
        ],
    ]
    assert result["best"] == "alpha"
    assert "**Best strategy: alpha**" in text


def test_header_names_dataset_classes_and_split_counts(written):
    _, params, _, text = written
    assert text.startswith(f"# transferline report: {params.dataset}\n")
    assert "3 classes: a, b, c (split counts at the end)." in text
    rows = table_rows(text.split("## Split counts")[1], "class")
    assert rows[:3] == [[c, "2", "1", "3", "6"] for c in CLASSES]
    assert rows[3] == ["**total**", "6", "3", "9", "18"]


def test_links_resolve_to_pngs_that_decode(written):
    root, _, _, _ = written
    out = root / "reports"
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    # curves per strategy, confusion, gallery, augment, and predict's gallery beside the report
    assert len(links) == len(STRATEGIES) + 4
    assert all(not Path(link).is_absolute() for link in links)
    for link in links:
        image = cv2.imread(str(out / link))
        assert image is not None, link
        assert min(image.shape[:2]) > 100
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        Path(link).name for link in links if link.startswith("figures/")
    )  # no temp leftovers
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_two_runs_are_byte_identical(inputs):
    root, params = inputs
    run_report(root, params, out="first")
    run_report(root, params, out="second")
    run_report(root, params, out="second")  # over an existing report, too
    first, second = root / "first", root / "second"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 1 + len(STRATEGIES) + 3
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert b"matplotlib" not in (first / "figures" / "gallery.png").read_bytes()


@pytest.mark.parametrize(
    "missing, command",
    [("metrics/train/alpha.json", "train@alpha"), ("plots/confusion/zeta.json", "evaluate@zeta")],
)
def test_missing_strategy_output_is_named_and_old_report_kept(inputs, missing, command):
    root, params = inputs
    run_report(root, params)
    before = (root / "reports" / "report.md").read_bytes()
    (root / missing).unlink()
    with pytest.raises(StageError, match=re.escape(missing) + ".*" + re.escape(command)):
        run_report(root, params)
    assert (root / "reports" / "report.md").read_bytes() == before


def test_gallery_shows_mistakes_first_then_by_path():
    records = [
        {"actual": "a", "predicted": "a", "path": "1"},
        {"actual": "a", "predicted": "b", "path": "3"},
        {"actual": "b", "predicted": "b", "path": "0"},
        {"actual": "c", "predicted": "a", "path": "2"},
    ]
    assert [r["path"] for r in gallery_records(records, 3)] == ["2", "3", "0"]


def test_confusion_matrix_counts_rows_actual_columns_predicted():
    records = [
        {"actual": "a", "predicted": "b", "path": "x"},
        {"actual": "a", "predicted": "b", "path": "y"},
        {"actual": "c", "predicted": "c", "path": "z"},
    ]
    counts = confusion_matrix(records, CLASSES, "s.json")
    assert counts.tolist() == [[0, 2, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(StageError, match="s.json.*'d'"):
        confusion_matrix([{"actual": "d", "predicted": "a", "path": "x"}], CLASSES, "s.json")


def test_best_is_the_validation_choice_with_its_test_score_as_the_estimate(inputs):
    root, params = inputs
    write_choice(root, "zeta")  # zeta: lower test accuracy than alpha, but chosen
    result = run_report(root, params)
    text = (root / "reports/report.md").read_text()
    assert result["best"] == "zeta"
    assert "**Best strategy: zeta**, chosen on validation accuracy" in text
    assert "**0.5556**" in text  # zeta's test accuracy, reported as the unbiased estimate
    assert "Test predictions (zeta)" in text


def test_choice_naming_an_unknown_strategy_is_an_error(inputs):
    root, params = inputs
    write_choice(root, "alpha")
    (root / "metrics/best.json").write_text(json.dumps({"strategy": "gone", "by": "val_acc"}))
    with pytest.raises(StageError, match="best.json.*'gone'.*dvc repro select"):
        run_report(root, params)


def test_predictions_listed_with_failures_and_gallery_linked(written):
    _, _, _, text = written
    assert "1 images classified by the best strategy" in text
    assert "- `demo/broken.jpg`: truncated: JPEG data ends" in text
    assert "![predictions](../predictions.png)" in text


def test_per_class_table_is_read_from_the_per_class_plot_of_the_best(written):
    lines = written[3].splitlines()
    start = lines.index("| class | accuracy | precision | recall | F1 | support |")
    rows = [
        [c.strip() for c in line.strip("|").split("|")][2:] for line in lines[start + 2 : start + 5]
    ]
    assert rows == [
        [c, "0.5000", f"{0.25 * (k + 1):.4f}", "0.7654", "3"][1:]  # alpha's macro F1
        for k, c in enumerate(CLASSES)
    ]


def test_the_report_leads_with_the_comparison_and_shows_why_the_model_is_wrong(written):
    root, _, _, text = written  # alpha is chosen; 2 of its test images are wrong
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[:2] == ["## Strategies", "## Why alpha is wrong"]
    assert heads[-2:] == ["## Per class (alpha, test split, single crop)", "## Split counts"]
    why = json.loads((root / "plots/mistakes/alpha.json").read_text())
    pairs = table_rows(text, "true class")
    assert pairs == [[p["actual"], p["predicted"], str(p["count"])] for p in why["most_confused"]]
    assert sum(int(r[2]) for r in pairs) == 2
    top = table_rows(text, "file")
    assert [r[0] for r in top] == [f"`{t['file']}`" for t in why["top_losses"]]
    assert top[0][0].startswith("`my photos/") and top[0][1] != top[0][2]  # a mistake leads
    per_class = table_rows(text, "class")
    assert [r[1] for r in per_class[:3]] == [f"{why['per_class_accuracy'][c]:.4f}" for c in CLASSES]


def test_mistakes_rank_by_loss_and_count_the_confused_pairs():
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # a, right
            [0.2, 0.7, 0.1],  # a called b: loss -log 0.2
            [0.05, 0.9, 0.05],  # a called b, surer: loss -log 0.05 (highest)
            [0.1, 0.1, 0.8],  # b called c
            [0.1, 0.8, 0.1],  # b, right
        ]
    )
    labels = [0, 0, 0, 1, 1]
    paths = [f"images/{i}.jpg" for i in range(5)]
    why = mistakes.build(probs, labels, paths, CLASSES, 2, {"images/2.jpg": "mine/IMG_2.JPG"})
    assert [t["path"] for t in why["top_losses"]] == ["images/2.jpg", "images/3.jpg"]
    first = why["top_losses"][0]
    assert first["file"] == "mine/IMG_2.JPG" and why["top_losses"][1]["file"] == "images/3.jpg"
    assert (first["actual"], first["predicted"], first["confidence"]) == ("a", "b", 0.9)
    assert first["p_actual"] == 0.05 and first["loss"] == pytest.approx(-np.log(0.05), abs=1e-6)
    assert why["most_confused"] == [
        {"actual": "a", "predicted": "b", "count": 2},
        {"actual": "b", "predicted": "c", "count": 1},
    ]
    assert why["per_class_accuracy"] == {"a": pytest.approx(1 / 3, abs=1e-6), "b": 0.5, "c": None}


def test_near_duplicates_across_shipped_splits_are_listed_by_file(inputs):
    root, params = inputs
    with (root / "split" / "near_duplicates.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["group", "path", "class", "split", "source", "across_splits"])
        w.writerow([1, "images/a/0.jpg", "a", "train", "mine/a.jpg", "yes"])
        w.writerow([1, "images/a/1.jpg", "a", "test", "mine/a (copy).jpg", "yes"])
        w.writerow([2, "images/b/0.jpg", "b", "train", "mine/b.jpg", "no"])
        w.writerow([2, "images/b/1.jpg", "b", "train", "mine/b2.jpg", "no"])
    run_report(root, params)
    text = (root / "reports" / "report.md").read_text()
    assert "2 group(s) of near-duplicate images (4 images" in text
    assert "**1 group(s) cross splits the dataset shipped**" in text
    assert table_rows(text, "group") == [
        ["1", "`mine/a.jpg`", "a", "train"],
        ["1", "`mine/a (copy).jpg`", "a", "test"],
    ]


def test_gallery_titles_name_the_users_file():
    from transferline.report.figures import gallery_title

    record = {"actual": "a", "predicted": "b", "path": "images/a/0bd362f78d23bef0.jpg"}
    sources = {record["path"]: "holiday photos/IMG_0042.JPG"}
    assert gallery_title(record, sources) == "b / a\nIMG_0042.JPG"
    assert gallery_title(record, {}) == "b / a\n0bd362f78d23bef0.jpg"
    long = {record["path"]: "x/" + "very_long_descriptive_name_" * 3 + "end.jpg"}
    title = gallery_title(record, long).split("\n")[1]
    assert title.startswith("...") and title.endswith("end.jpg") and len(title) == 26


def test_the_chosen_strategys_grad_cam_figure_is_linked_and_a_missing_one_named(inputs):
    root, params = inputs
    cam = root / "plots" / "cam"
    cam.mkdir(parents=True)
    cv2.imwrite(str(cam / "alpha.png"), np.full((60, 80, 3), 128, np.uint8))
    result = run_report(root, params, cam=cam)
    text = (root / "reports" / "report.md").read_text()
    assert result["links"]["cam"] == "../plots/cam/alpha.png"
    why = text.split("## Why alpha is wrong", 1)[1].split("\n## ", 1)[0]
    assert "![Grad-CAM of the highest-loss test images](../plots/cam/alpha.png)" in why
    # without the figure: the stage that draws it is named, and the report is left as it was
    (cam / "alpha.png").unlink()
    with pytest.raises(
        StageError,
        match=r"plots/cam/alpha.png: not found; run `dvc repro "
        r"evaluate@alpha`",
    ):
        run_report(root, params, cam=cam)
    assert (root / "reports" / "report.md").read_text() == text
