"""``seglab train --boxes``: box detectors trained from a boxes CSV (the fake box family of tests/core/boxfamily.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from boxfamily import bright_squares, register

from napari_seglab.cli import main
from napari_seglab.core.models import load_checkpoint

FAST = ["--family", "boxnet", "--epochs", "1", "--steps-per-epoch", "2", "--patch", "32", "--batch-size", "2",
        "--device", "cpu", "--threads", "1"]


def write_boxes(path: Path, rows, columns=("y0", "x0", "y1", "x1", "class")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def files(tmp_path, monkeypatch):
    register(monkeypatch)
    img, rows = bright_squares()
    tifffile.imwrite(tmp_path / "img.tif", img)
    return tmp_path / "img.tif", write_boxes(tmp_path / "boxes.csv", rows)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seglab: error: "), err
    return err[0]


def test_train_from_a_boxes_csv(files, tmp_path, capsys):
    image, boxes = files
    out = tmp_path / "det.pt"
    assert main(["train", "--image", str(image), "--boxes", str(boxes), "--model-out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert "val AP@0.5" in captured.err and "3 boxes in 1 annotated region" in captured.err
    assert f"model saved to {out}" in captured.out
    ckpt = load_checkpoint(out)
    assert ckpt.label_mode == "boxes" and ckpt.spec.family == "boxnet"


def test_train_from_boxes_with_an_annotated_area(files, tmp_path, capsys):
    image, boxes = files
    area = np.zeros((96, 128), np.uint8)
    area[:, :64] = 1
    tifffile.imwrite(tmp_path / "area.tif", area)
    out = tmp_path / "det.pt"
    assert main(["train", "--image", str(image), "--boxes", str(boxes), "--labels", str(tmp_path / "area.tif"),
                 "--label-mode", "boxes", "--model-out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "1 box(es) lie outside the annotated area" in err  # the square at x 70..82 is outside


@pytest.mark.parametrize(("extra", "message"), [
    (["--label-mode", "scribbles"], "--boxes trains from boxes: use --label-mode boxes"),
    (["--boxes", "{boxes}"], "1 --image but 2 --boxes"),
    (["--labels", "{image}", "--labels", "{image}"], "1 --image but 2 --labels; give one area file per image"),
    (["--family", "unet"], "learns from painted labels, not boxes"),
])
def test_box_argument_errors_are_one_line(files, tmp_path, capsys, extra, message):
    image, boxes = files
    extra = [e.format(boxes=boxes, image=image) for e in extra]
    argv = ["train", "--image", str(image), "--boxes", str(boxes), "--model-out", str(tmp_path / "m.pt"), *FAST,
            *extra]
    assert main(argv) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "m.pt").exists()


def test_bad_boxes_csvs_are_named(files, tmp_path, capsys):
    image, _ = files
    no_column = write_boxes(tmp_path / "bad.csv", [{"y0": 1, "x0": 1, "y1": 5}], ("y0", "x0", "y1"))
    assert main(["train", "--image", str(image), "--boxes", str(no_column), "--model-out", str(tmp_path / "m.pt"),
                 *FAST]) == 2
    assert "bad.csv: not a boxes CSV (no column x1" in error_line(capsys)
    outside = write_boxes(tmp_path / "out.csv", [{"y0": 1, "x0": 1, "y1": 5, "x1": 5, "class": 1},
                                                 {"y0": 500, "x0": 1, "y1": 505, "x1": 5, "class": 1}])
    assert main(["train", "--image", str(image), "--boxes", str(outside), "--model-out", str(tmp_path / "m.pt"),
                 *FAST]) == 2
    assert "out.csv, line 3: the box (y0=500" in error_line(capsys)  # the CSV line, not the row index
    assert main(["train", "--image", str(image), "--boxes", str(tmp_path / "missing.csv"), "--model-out",
                 str(tmp_path / "m.pt"), *FAST]) == 2
    assert "--boxes" in error_line(capsys)


@pytest.mark.slow
def test_label_mode_boxes_without_boxes_is_refused_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "napari_seglab.cli", "train", "--image", str(tmp_path / "x.tif"),
                             "--label-mode", "boxes", "--model-out", str(tmp_path / "m.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["seglab: error: --label-mode boxes needs --boxes BOXES.csv "
                                                  "(one per --image)"]
