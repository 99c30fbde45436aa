"""Box tables, box evaluation, box families, object scale and options, as a hostile or careless user gives them (issue 26).

The rule of tests/cli/test_cli_hostile.py, for the surfaces added since: every
case ends in exit 0 or 2 with one line ``seglab: error: ...`` that names the
file, line and field (or the option), never exit 1; nothing is allocated
beyond a bound, and no model is saved that ``predict`` or ``info`` refuse.
The box family is the fake ``boxnet`` of tests/core/boxfamily.py (a two-layer
network: only the plumbing is under test), on 64 x 64 images.
"""

from __future__ import annotations

import csv
import json
import resource
import sys

import numpy as np
import pytest
import tifffile
import torch
from boxfamily import bright_squares, register
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_seglab import cli
from napari_seglab.cli import main
from napari_seglab.core.errors import InputError
from napari_seglab.core.labels import _boxes as box_rows
from napari_seglab.core.labels import read_boxes_csv
from napari_seglab.core.models import MAX_CLASSES, get_family
from napari_seglab.core.predict import PredictOptions
from napari_seglab.core.settings import UnusedSettingError, check_used

FAST = ["--family", "boxnet", "--epochs", "1", "--steps-per-epoch", "1", "--patch", "32", "--batch-size", "2",
        "--device", "cpu", "--threads", "1", "--val-fraction", "0"]
SQUARES = ((8, 8, 10), (30, 40, 12))
HEADER = "y0,x0,y1,x1,class,score,plane\n"


@pytest.fixture
def image(tmp_path, monkeypatch):
    """A 64 x 64 image of two bright squares (the boxnet family registered for the test)."""
    register(monkeypatch)
    img, _rows = bright_squares((64, 64), SQUARES)
    tifffile.imwrite(tmp_path / "img.tif", img)
    return tmp_path / "img.tif"


def write_csv(path, text: str | bytes):
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def good_rows() -> str:
    return "".join(f"{y},{x},{y + s},{x + s},1,,\n" for y, x, s in SQUARES)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seglab: error: "), err
    return err[0]


def train(image, boxes, tmp_path, *extra) -> int:
    return main(["train", "--image", str(image), "--boxes", str(boxes), "--model-out", str(tmp_path / "m.pt"),
                 *FAST, *extra])


# ----------------------------------------------------------------------------- one reader for box tables
@pytest.mark.parametrize(("row", "field"), [
    ("8,8,18,18,1,,abc", "plane 'abc'"),
    ("8,8,18,18,1,,1.5", "plane '1.5'"),
    ("8,8,18,18,1,,-1", "plane '-1'"),
    ("8,8,18,18,1,,1,2,3", "fields, more than the header's 7"),
    ("8,8,18,18,1,high,", "score 'high'"),
    ("8,8,18,18,1,nan,", "score 'nan'"),
    ("8,8,18,18,1,inf,", "score 'inf'"),
    ("8,8,18,18,cell,,", "class 'cell'"),
    ("8,8,18,18,2.5,,", "class '2.5'"),
    ("8,8,18", "3 fields, fewer than the header's 7"),
    ("8,8,18,x1,1,,", "box corners must be numbers"),
    ("8,8,nan,18,1,,", "finite"),
    ('8,8,18,18,1,,"' + "9" * 200_000 + '"', "not a readable CSV row"),
])
def test_every_field_is_checked_where_it_is_read(image, tmp_path, capsys, row, field):
    boxes = write_csv(tmp_path / "b.csv", HEADER + "\n\n" + row + "\n")  # two blank lines: the row is line 4
    assert train(image, boxes, tmp_path) == 2
    line = error_line(capsys)
    assert "b.csv, line 4: " in line and field in line, line
    assert not (tmp_path / "m.pt").exists()
    assert main(["evaluate", "--pred-boxes", str(boxes), "--truth-boxes", str(boxes)]) == 2
    assert "b.csv, line 4: " in error_line(capsys)


def test_line_numbers_count_file_lines_after_blank_lines_and_quoted_newlines(tmp_path):
    text = HEADER + "\n8,8,18,18,1,,\n\n\n" + '30,40,42,52,1,"0.5",\n' + "1,1,1,5,1,,\n"
    with pytest.raises(InputError, match=r"b\.csv, line 7: empty box"):
        read_boxes_csv(write_csv(tmp_path / "b.csv", text))
    rows = read_boxes_csv(write_csv(tmp_path / "ok.csv", HEADER + "\n8,8,18,18,1,,\n\n30,40,42,52,1,0.5,\n"))
    assert [r["where"].rsplit(", ", 1)[1] for r in rows] == ["line 3", "line 5"]


def test_plane_written_by_pandas_as_a_float_is_the_plane(tmp_path):
    rows = read_boxes_csv(write_csv(tmp_path / "b.csv", HEADER + "8,8,18,18,1,0.9,1.0\n8,8,18,18,1,0.9,\"0,2\"\n"))
    assert [r["plane"] for r in rows] == ["1", "0,2"]


def test_zero_byte_csv_makes_the_image_a_negative(image, tmp_path, capsys):
    boxes = write_csv(tmp_path / "b.csv", HEADER + good_rows())
    empty = write_csv(tmp_path / "empty.csv", b"")
    argv = ["train", "--image", str(image), "--boxes", str(boxes), "--image", str(image), "--boxes", str(empty),
            "--model-out", str(tmp_path / "m.pt"), *FAST]
    assert main(argv) == 0
    assert "1 of them negative" in capsys.readouterr().err
    assert read_boxes_csv(write_csv(tmp_path / "blank.csv", "\n \n")) == []


def test_a_csv_with_a_byte_order_mark_is_read(image, tmp_path, capsys):
    boxes = write_csv(tmp_path / "b.csv", (HEADER + good_rows()).encode("utf-8-sig"))
    assert [r["y0"] for r in read_boxes_csv(boxes)] == [8.0, 30.0]
    assert train(image, boxes, tmp_path) == 0


@pytest.mark.parametrize(("text", "message"), [
    (b"y0,x0,y1,x1\n\xff\xfe8,8\n", "not a text CSV file"),
    (b"y0,x0,y1,x1\n8,8\x00,18,18\n", "line 2: box corners must be numbers"),
    ("y0,y0,x0,y1,x1\n1,1,1,5,5\n", "column y0 appears more than once"),
    ("a,b,c\n1,2,3\n", "no column y0, x0, y1, x1"),
    ("8" * (2**20 + 10), "line 1: longer than"),
])
def test_files_that_are_not_box_tables(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_boxes_csv(write_csv(tmp_path / "b.csv", text))


def test_more_rows_than_a_table_may_hold_are_refused_while_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(box_rows, "MAX_BOX_ROWS", 5)
    with pytest.raises(InputError, match="more than 5 boxes"):
        read_boxes_csv(write_csv(tmp_path / "b.csv", HEADER + "8,8,18,18,1,,\n" * 6))


# ----------------------------------------------------------------------------- bounds from what the model holds
@pytest.mark.parametrize("cls", [str(MAX_CLASSES), "1000000000", "1e300"])
def test_class_ids_beyond_what_a_model_holds_are_refused_before_building(image, tmp_path, capsys, cls):
    boxes = write_csv(tmp_path / "b.csv", HEADER + good_rows() + f"1,1,5,5,{cls},,\n")
    assert train(image, boxes, tmp_path) == 2
    line = error_line(capsys)
    assert "b.csv, line 4: class" in line and f"largest class id a model can hold ({MAX_CLASSES - 1})" in line
    assert not (tmp_path / "m.pt").exists()


def test_the_largest_class_id_saves_a_model_that_info_reads(image, tmp_path, capsys, monkeypatch):
    boxes = write_csv(tmp_path / "b.csv", HEADER + good_rows() + f"1,1,5,5,{MAX_CLASSES - 1},,\n")
    assert train(image, boxes, tmp_path) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["n_classes"] == MAX_CLASSES


def test_more_boxes_in_one_patch_than_the_model_gives_are_refused(image, tmp_path, capsys):
    limit = get_family("boxnet").max_objects
    boxes = write_csv(tmp_path / "b.csv", HEADER + "8,8,18,18,1,,\n" * (limit + 1))
    assert train(image, boxes, tmp_path) == 2
    line = error_line(capsys)
    assert f"{limit + 1} boxes lie within 64 x 64 pixels" in line and f"at most {limit} objects" in line


@pytest.mark.slow
def test_300000_rows_for_a_small_image_exit_2_in_bounded_memory(image, tmp_path):
    """A real process: 300,000 (repeated) rows, 150x what a model gives per image, are read, checked and
    refused; its peak RSS stays bounded. (A million took 36 s of the suite for the same check.)"""
    import subprocess

    boxes = tmp_path / "b.csv"
    with open(boxes, "w") as fh:
        fh.write(HEADER)
        fh.writelines(["8,8,18,18,1,,\n"] * 300_000)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import boxfamily, pytest; "
            "mp = pytest.MonkeyPatch(); boxfamily.register(mp); from napari_seglab.cli import main; "
            "sys.exit(main(sys.argv[2:]))")
    tests_core = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "core")
    proc = subprocess.run([sys.executable, "-c", code, tests_core, "train", "--image", str(image), "--boxes",
                           str(boxes), "--model-out", str(tmp_path / "m.pt"), *FAST],
                          capture_output=True, text=True, timeout=600)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert proc.returncode == 2, proc.stderr
    assert "300000 boxes lie within" in proc.stderr
    assert peak < 3 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------- box scoring in bounded memory
def test_scoring_10000_boxes_against_10000_in_bounded_memory(tmp_path, capsys):
    import tracemalloc

    from napari_seglab.core.evaluate import box_scores

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(100), np.arange(100)), -1).reshape(-1, 2) * 20.0
    truth = np.hstack([grid, grid + 12])
    pred = [{"y0": a, "x0": b, "y1": c, "x1": d, "score": s}
            for (a, b, c, d), s in zip(truth + rng.normal(0, 1.5, truth.shape), rng.random(len(truth)), strict=True)]
    tracemalloc.start()
    try:
        scores = box_scores(pred, truth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a float64 pair matrix alone would be 800 MB; the chunks stay near 40 MB
    assert peak < 150 * 2**20, f"{peak / 2**20:.0f} MB"
    assert scores["n_true"] == 10_000 and scores["ap50"] > 0.8


def test_scoring_duplicate_boxes_matches_each_true_box_once():
    from napari_seglab.core.evaluate import box_scores

    same = np.tile([[0.0, 0.0, 10.0, 10.0]], (300, 1))
    scores = box_scores(same, same[:100])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (100, 200, 0)


# ----------------------------------------------------------------------------- one out-of-memory classification
@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "numpy",
], ids=["MemoryError", "cpu-allocator", "cuda", "cudnn", "numpy"])
def test_every_out_of_memory_error_is_exit_2(tmp_path, monkeypatch, capsys, error):
    def fail(args):
        if error == "numpy":
            np.empty(2**62, np.uint8)
        raise error

    monkeypatch.setattr(cli, "cmd_info", fail)
    assert main(["info", str(tmp_path / "m.pt")]) == 2
    assert "out of memory; try a smaller" in error_line(capsys)


def test_other_runtime_errors_stay_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_info", lambda args: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    assert main(["info", str(tmp_path / "m.pt")]) == 1


# ----------------------------------------------------------------------------- options: used or refused
@pytest.mark.parametrize(("extra", "option"), [
    (["--encoder", "resnet18"], "encoder (--encoder) is not used by Box net models"),
    (["--preset", "fast"], "model preset (--preset) is not used by Box net models"),
    (["--self-training"], "self-training (--self-training) is not used by Box net models"),
    (["--class-weights", "balanced"], "class weights (--class-weights) is not used by Box net models"),
    (["--focal-gamma", "2"], "focal gamma (--focal-gamma) is not used by Box net models"),
    (["--instance-head", "flows"], "instance head"),
])
def test_training_options_a_box_family_ignores_are_refused(image, tmp_path, capsys, extra, option):
    boxes = write_csv(tmp_path / "b.csv", HEADER + good_rows())
    assert train(image, boxes, tmp_path, *extra) == 2
    assert option in error_line(capsys)


@pytest.fixture
def box_model(image, tmp_path, capsys):
    boxes = write_csv(tmp_path / "b.csv", HEADER + good_rows())
    assert train(image, boxes, tmp_path, "--scale", "2") == 0
    capsys.readouterr()
    return tmp_path / "m.pt"


@pytest.mark.parametrize(("argv", "option"), [
    (["predict", "--tta"], "flip averaging (TTA) (--tta) is not used by Box net models"),
    (["predict", "--split-instances"], "split touching objects (--split-instances) is not used by Box net"),
    (["batch", "--tta"], "(--tta) is not used by Box net models"),
    (["batch", "--probabilities"], "write probabilities (--probabilities) is not used by Box net models"),
])
def test_prediction_options_a_box_model_ignores_are_refused(box_model, image, tmp_path, capsys, argv, option):
    if argv[0] == "predict":
        argv = [*argv, "--model", str(box_model), "--input", str(image), "--boxes", str(tmp_path / "p.csv")]
    else:
        argv = [*argv, "--model", str(box_model), "--input-dir", str(image.parent), "--pattern", "img.tif",
                "--output-dir", str(tmp_path / "out"), "--workers", "0"]
    assert main(argv) == 2
    assert option in error_line(capsys)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.parametrize("command", ["predict", "batch"])
def test_a_score_threshold_for_a_per_pixel_model_is_refused(random_unet, image, tmp_path, capsys, command):
    """A U-Net scores no detections: --score-threshold would do nothing, so it is refused (the default is not)."""
    if command == "predict":
        argv = ["predict", "--model", str(random_unet), "--input", str(image), "--output", str(tmp_path / "p.tif")]
    else:
        argv = ["batch", "--model", str(random_unet), "--input-dir", str(image.parent), "--pattern", "img.tif",
                "--output-dir", str(tmp_path / "out"), "--workers", "0"]
    assert main([*argv, "--device", "cpu", "--score-threshold", "0.7"]) == 2
    assert "score threshold (--score-threshold) is not used by U-Net models" in error_line(capsys)
    assert not (tmp_path / "p.tif").exists() and not (tmp_path / "out" / "manifest.csv").exists()
    assert main([*argv, "--device", "cpu", "--score-threshold", "0.5"]) == 0


@pytest.mark.parametrize("family", ["maskrcnn", "retinanet", "fcos", "fasterrcnn"])
def test_tta_is_refused_for_every_object_family(family):
    with pytest.raises(UnusedSettingError, match="flip averaging"):
        check_used(PredictOptions(tta=True), get_family(family))
    check_used(PredictOptions(tta=True), get_family("unet"))


# ----------------------------------------------------------------------------- the recorded object scale
def test_a_box_model_trained_at_scale_2_predicts_at_scale_2(box_model, image, tmp_path, monkeypatch, capsys):
    seen = []
    family = get_family("boxnet")
    detect = family.predict_objects

    def spy(lm, chw, **kw):
        seen.append(chw.shape)
        return (yield from detect(lm, chw, **kw))

    object.__setattr__(family, "predict_objects", spy)  # the family is this test's own (registered per test)
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(box_model), "--input", str(image), "--boxes", str(out)]) == 0
    assert seen == [(1, 128, 128)]  # the plane resampled x2, as the training images were
    with open(out) as fh:
        found = sorted((float(r["y0"]), float(r["x0"]), float(r["y1"]), float(r["x1"])) for r in csv.DictReader(fh))
    # the boxes come back in the image's own pixels
    expected = sorted((y, x, y + s, x + s) for y, x, s in SQUARES)
    assert np.allclose(found, expected, atol=1.0), found


# ----------------------------------------------------------------------------- any content: exit 0 or 2
FIELD = st.one_of(st.integers(-5, 80).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.sampled_from(["", "abc", "1.0", "0,1", "nan", " 3 ", '"', "1e400", "\x00", "\ufeff"]),
                  st.text(max_size=6))
ROW = st.lists(FIELD, min_size=0, max_size=9).map(lambda fields: ",".join(fields))
HEADERS = st.sampled_from([HEADER.strip(), "y0,x0,y1,x1", "y0,x0,y1,x1,class", "\ufeffy0,x0,y1,x1,score",
                           "x0,y0", ""])
CONTENT = st.one_of(st.tuples(HEADERS, st.lists(ROW, max_size=8)).map(lambda hr: "\n".join([hr[0], *hr[1]])),
                    st.binary(max_size=200))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(pred=CONTENT, truth=CONTENT)
def test_evaluate_any_box_tables_exits_0_or_2(tmp_path_factory, pred, truth):
    where = tmp_path_factory.mktemp("eval")
    paths = []
    for name, content in (("p.csv", pred), ("t.csv", truth)):
        paths.append(write_csv(where / name, content if isinstance(content, bytes) else content.encode("utf-8",
                                                                                                     "surrogatepass")))
    before = _peak_rss()
    code = main(["evaluate", "--pred-boxes", str(paths[0]), "--truth-boxes", str(paths[1]), "--json", "-"])
    assert code in (0, 2)
    assert _peak_rss() - before < 256 * 2**20


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=CONTENT)
def test_train_boxes_on_any_table_exits_0_or_2(tmp_path_factory, content):
    """Every example trains one step of the two-layer boxnet on a 64 x 64 image (or is refused)."""
    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        register(mp)
        where = tmp_path_factory.mktemp("train")
        img, _ = bright_squares((64, 64), SQUARES)
        tifffile.imwrite(where / "img.tif", img)
        boxes = write_csv(where / "b.csv", content if isinstance(content, bytes)
                          else content.encode("utf-8", "surrogatepass"))
        before = _peak_rss()
        code = main(["train", "--image", str(where / "img.tif"), "--boxes", str(boxes), "--model-out",
                     str(where / "m.pt"), *FAST])
        assert code in (0, 2)
        assert _peak_rss() - before < 512 * 2**20
        assert (where / "m.pt").exists() == (code == 0)
