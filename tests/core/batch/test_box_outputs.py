"""Batch runs with a box detector: a boxes CSV per image and the per-image box count, no label images."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch

from napari_seglab.cli import main
from napari_seglab.core.batch import iter_run_batch
from napari_seglab.core.events import drive
from napari_seglab.core.labels import BOX_COLUMNS
from napari_seglab.core.models import CheckpointMeta, ModelSpec, build_model, save_checkpoint

#: an untrained RetinaNet whose every candidate scores about 0.5: at most 7 boxes per tile
OPTIONS = {"box_score_thresh": 0.0, "detections_per_img": 7}


@pytest.fixture(scope="module")
def box_model(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec(family="retinanet", arch="retinanet_resnet18_fpn", options=dict(OPTIONS))
    model, _ = build_model(spec)
    torch.nn.init.zeros_(model.detector.head.classification_head.cls_logits.bias)
    path = tmp_path_factory.mktemp("model") / "boxes.pt"
    save_checkpoint(path, model, CheckpointMeta(model=spec, label_mode="instances", patch=64))
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(inputs / f"{name}.tif", rng.integers(0, 4000, (64, 64), dtype=np.uint16))
    return inputs


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_batch_writes_a_boxes_csv_and_the_count_per_image(box_model, folder, tmp_path):
    out = tmp_path / "out"
    summary = drive(iter_run_batch(str(box_model), str(folder), str(out), workers=0, tile=64,
                              score_threshold=0.3))
    assert (summary.ok, summary.failed) == (2, 0)
    counts = {}
    for name in ("a", "b"):
        assert not (out / f"{name}_labels.tif").exists() and not (out / f"{name}_objects.csv").exists()
        columns, rows = _rows(out / f"{name}_boxes.csv")
        assert tuple(columns) == BOX_COLUMNS
        assert 0 < len(rows) <= 7 and all(float(r["score"]) >= 0.3 for r in rows)
        counts[f"{name}.tif"] = len(rows)
    _, summary_rows = _rows(summary.summary_csv)
    assert {r["input"]: int(r["object_count"]) for r in summary_rows} == counts
    assert all(float(r["mean_score"]) >= 0.3 for r in summary_rows)

    # a second run that skips the files done reads their counts back from the boxes CSVs
    again = drive(iter_run_batch(str(box_model), str(folder), str(out), workers=0, tile=64,
                            score_threshold=0.3, skip_existing=True))
    assert again.skipped == 2
    _, summary_rows = _rows(again.summary_csv)
    assert {r["input"]: int(r["object_count"]) for r in summary_rows} == counts


def test_a_higher_threshold_counts_fewer_boxes(box_model, folder, tmp_path):
    low = drive(iter_run_batch(str(box_model), str(folder), str(tmp_path / "low"), workers=0, tile=64,
                          score_threshold=0.0))
    high = drive(iter_run_batch(str(box_model), str(folder), str(tmp_path / "high"), workers=0, tile=64,
                           score_threshold=0.999))
    count = {name: sum(int(r["object_count"]) for r in _rows(s.summary_csv)[1]) for name, s in
             (("low", low), ("high", high))}
    assert 0 < count["low"] <= 14 and count["high"] == 0  # up to 7 per image; none of ~0.5 reach 0.999


def test_cli_predict_and_batch_write_the_detectors_rows(box_model, folder, tmp_path, capsys):
    boxes = tmp_path / "one.csv"
    code = main(["predict", "--model", str(box_model), "--input", str(folder / "a.tif"), "--boxes", str(boxes),
                 "--tile", "64", "--score-threshold", "0.3"])
    assert code == 0
    columns, rows = _rows(boxes)
    assert tuple(columns) == BOX_COLUMNS and 0 < len(rows) <= 7
    assert f"{len(rows)} boxes" in capsys.readouterr().out
    # a label image is not what a box model gives
    assert main(["predict", "--model", str(box_model), "--input", str(folder / "a.tif"), "--output",
                 str(tmp_path / "l.tif"), "--boxes", str(tmp_path / "two.csv")]) == 2
    assert "gives boxes" in capsys.readouterr().err and not (tmp_path / "l.tif").exists()
    assert main(["batch", "--model", str(box_model), "--input-dir", str(folder), "--output-dir",
                 str(tmp_path / "cli"), "--workers", "0", "--tile", "64", "--score-threshold", "0.3"]) == 0
    assert _rows(tmp_path / "cli" / "a_boxes.csv")[1] == rows
