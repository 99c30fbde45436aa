"""``seglab evaluate --pred-boxes``: box AP, precision/recall/F1 at a score threshold, counts; bad input exits 2.

The CSV pair below is scored by hand:

- true boxes A (0,0)-(10,10), B (20,20)-(30,30), C (40,40)-(50,50);
- predicted, best score first: A exactly (0.9); B shifted 2 px right (0.8, IoU 80/120 = 0.667);
  a box on nothing (0.7); C exactly (0.3).
- AP@0.5: hits 1, 1, 0, 1 -> precision made monotone 1, 1, 3/4, 3/4 at recall 1/3, 2/3, 2/3, 1 -> 11/12.
- AP@0.75: B no longer matches: hits 1, 0, 0, 1 -> 1/3 * 1 + 1/3 * 1/2 = 1/2.
- AP@[.5:.95]: 11/12 at IoU 0.5-0.65 (4 thresholds), 1/2 at 0.7-0.95 (6): (4 * 11/12 + 6 / 2) / 10 = 2/3.
- score >= 0.5: 3 boxes, TP 2 (A, B), FP 1, FN 1 (C) -> precision = recall = F1 = 2/3, count error 0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_seglab.cli import main

TRUTH = "y0,x0,y1,x1,class\n0,0,10,10,1\n20,20,30,30,1\n40,40,50,50,1\n"
PRED = "y0,x0,y1,x1,class,score\n0,0,10,10,1,0.9\n20,22,30,32,1,0.8\n60,60,70,70,1,0.7\n40,40,50,50,1,0.3\n"


@pytest.fixture
def pair(tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "pred.csv").write_text(PRED)
    return tmp_path / "pred.csv", tmp_path / "truth.csv"


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("seglab: error: ")
    return err[0]


def _all_row(out: str) -> list[str]:
    (row,) = [line for line in out.splitlines() if line.startswith("all ")]
    return row.split()[1:]


def test_box_scores_as_a_table(pair, capsys):
    pred, truth = pair
    assert main(["evaluate", "--pred-boxes", str(pred), "--truth-boxes", str(truth)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for name in ("AP@0.5", "AP@0.75", "AP@[.5:.95]", "precision", "recall", "F1", "count error"):
        assert name in header
    assert _all_row(out) == ["0.917", "0.500", "0.667", "0.667", "0.667", "0.667", "2", "1", "1", "3", "3", "+0"]
    assert ">= 0.5" in out


def test_json_file_and_a_lower_score_threshold(pair, tmp_path, capsys):
    pred, truth = pair
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--pred-boxes", str(pred), "--truth-boxes", str(truth), "--score-threshold", "0.2",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["ap50"] == pytest.approx(11 / 12) and doc["ap75"] == pytest.approx(0.5)
    assert doc["ap"] == pytest.approx(2 / 3)
    # at 0.2 the C box counts too: TP 3, FP 1, FN 0
    assert (doc["tp"], doc["fp"], doc["fn"], doc["count_error"]) == (3, 1, 0, 1)
    assert doc["precision"] == pytest.approx(0.75) and doc["recall"] == 1.0 and doc["planes"] == {}
    assert _all_row(capsys.readouterr().out)[6:] == ["3", "1", "0", "4", "3", "+1"]


def test_json_on_stdout(pair, capsys):
    pred, truth = pair
    assert main(["evaluate", "--pred-boxes", str(pred), "--truth-boxes", str(truth), "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["f1"] == pytest.approx(2 / 3) and doc["score_threshold"] == 0.5


def test_truth_from_instance_labels(pair, tmp_path, capsys):
    pred, _truth = pair
    labels = np.zeros((64, 64), np.uint16)
    labels[0:10, 0:10], labels[20:30, 20:30], labels[40:50, 40:50] = 1, 2, 3
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert main(["evaluate", "--pred-boxes", str(pred), "--truth", str(tmp_path / "labels.tif")]) == 0
    assert _all_row(capsys.readouterr().out)[:3] == ["0.917", "0.500", "0.667"]


def test_a_stack_is_scored_per_plane_and_pooled(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("y0,x0,y1,x1,plane\n0,0,10,10,0\n20,20,30,30,1\n")
    # the best box sits on plane 1 where plane 0's object is: a false positive, not a match
    (tmp_path / "p.csv").write_text("y0,x0,y1,x1,score,plane\n0,0,10,10,0.95,1\n0,0,10,10,0.9,0\n"
                                    "20,20,30,30,0.6,1\n")
    assert main(["evaluate", "--pred-boxes", str(tmp_path / "p.csv"), "--truth-boxes", str(tmp_path / "t.csv"),
                 "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert [line.split()[:3] for line in out.splitlines() if line.startswith("plane ")] == [
        ["plane", "0", "1.000"], ["plane", "1", "0.500"]]
    assert _all_row(out)[0] == "0.667"
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["n_planes"] == 2 and doc["planes"]["1"]["fp"] == 1


@pytest.mark.parametrize(("argv", "words"), [
    (["--pred", "{pred}", "--pred-boxes", "{pred}", "--truth-boxes", "{truth}"], "do not mix"),
    (["--pred", "{pred}", "--truth-boxes", "{truth}"], "needs --pred-boxes"),
    (["--pred-boxes", "{pred}"], "needs the truth"),
    (["--pred-boxes", "{pred}", "--truth-boxes", "{truth}", "--truth", "{truth}"], "not both"),
    (["--pred-boxes", "{pred}", "--truth-boxes", "{truth}", "--score-threshold", "1.5"], "between 0 and 1"),
    (["--pred-boxes", "{pred}", "--truth-boxes", "{bad}"], "not a boxes CSV"),
    (["--pred-boxes", "{pred}", "--truth-boxes", "{missing}"], "missing.csv"),
    (["--pred-boxes", "{pred}", "--truth-boxes", "{truth}", "--json", "{truth}"], "overwrite the input"),
    (["--pred-boxes", "{empty_box}", "--truth-boxes", "{truth}"], "line 2"),
    (["--pred"], "expected one argument"),
    ([], "--pred-boxes"),
])
def test_bad_input_is_one_line_and_exit_2(pair, tmp_path, capsys, argv, words):
    pred, truth = pair
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "empty_box.csv").write_text("y0,x0,y1,x1\n5,5,5,9\n")
    paths = {"pred": pred, "truth": truth, "bad": tmp_path / "bad.csv", "missing": tmp_path / "missing.csv",
             "empty_box": tmp_path / "empty_box.csv"}
    args = [a.format(**paths) for a in argv]
    before = truth.read_bytes()
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1]
    if words != "expected one argument":  # argparse prints its usage first
        assert len(err) == 1 and err[0].startswith("seglab: error: ")
    assert truth.read_bytes() == before


def test_labels_evaluation_is_unchanged_and_refuses_a_score_threshold(tmp_path, capsys):
    labels = np.zeros((20, 20), np.uint16)
    labels[2:8, 2:8] = 1
    tifffile.imwrite(tmp_path / "l.tif", labels)
    assert main(["evaluate", "--pred", str(tmp_path / "l.tif"), "--truth", str(tmp_path / "l.tif"),
                 "--json", str(tmp_path / "l.json")]) == 0
    assert json.loads(capsys.readouterr().out)["ap50"] == 1.0
    assert json.loads((tmp_path / "l.json").read_text())["dice"] == 1.0
    assert main(["evaluate", "--pred", str(tmp_path / "l.tif"), "--truth", str(tmp_path / "l.tif"),
                 "--score-threshold", "0.3"]) == 2
    assert "--pred-boxes" in error_line(capsys)
