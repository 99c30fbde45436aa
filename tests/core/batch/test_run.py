"""Batch prediction over a folder, in-process: outputs, manifest, isolation, resume."""

from __future__ import annotations

import csv
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_seglab.core.batch import MANIFEST_COLUMNS, iter_run_batch, read_manifest
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import FileDone, collect
from napari_seglab.core.io import read_image
from napari_seglab.core.synthetic import make_nuclei

GOOD = ("a_2d_u8.tif", "b_2d_u16.tif", "c_3d_u16.tif", "d_3d_u8.tif")
BAD = ("corrupt.tif", "empty.tif", "notes.tif", "rgb.tif", "six_d.tif")


@pytest.fixture(scope="module")
def model_path(random_unet):
    """The session's random-weight U-Net checkpoint: the batch plumbing needs no trained model."""
    return str(random_unet)


def write_folder(folder, good=GOOD, bad=BAD):
    """Tiny 2D/3D uint8/uint16 TIFFs plus broken files; returns {name: sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    img2, _ = make_nuclei((64, 64), seed=2)
    img3 = make_nuclei((8, 64, 64), seed=3)[0][2:5]
    arrays = {"a_2d_u8.tif": (img2 // 256).astype(np.uint8), "b_2d_u16.tif": img2,
              "c_3d_u16.tif": img3, "d_3d_u8.tif": (img3 // 64).astype(np.uint8),
              "rgb.tif": np.zeros((64, 64, 3), np.uint8),
              "six_d.tif": np.zeros((2, 2, 2, 2, 16, 16), np.uint8)}
    for name in good + bad:
        path = folder / name
        if name in arrays:
            rgb = name == "rgb.tif"
            tifffile.imwrite(path, arrays[name], photometric="rgb" if rgb else "minisblack")
        elif name == "corrupt.tif":
            tifffile.imwrite(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
            raw = path.read_bytes()
            path.write_bytes(raw[:300] + b"\xde\xad" * 50)  # valid header, then truncated garbage
        elif name == "empty.tif":
            path.write_bytes(b"")
        elif name == "notes.tif":
            path.write_text("these are my notes, not an image\n")
    return hashes(folder)


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def drive(gen):
    """Run a batch generator to the end: (FileDone events, BatchSummary)."""
    events, result = collect(gen)
    return [e for e in events if isinstance(e, FileDone)], result


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_in_process_outputs_manifest_and_isolation(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    before = write_folder(inp)
    events, summary = drive(iter_run_batch(model_path, str(inp), str(out), workers=0, probabilities=True))

    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (9, 4, 5, 0)
    assert [e.index for e in events] == list(range(1, 10)) and all(e.total == 9 for e in events)
    assert hashes(inp) == before  # inputs never touched
    for name in GOOD:
        stem = name[:-4]
        image = read_image(inp / name)
        labels = read_image(out / f"{stem}_labels.tif")
        assert labels.axes == image.axes and labels.data.shape == image.data.shape
        assert labels.data.dtype == np.uint16
        probs = tifffile.imread(out / f"{stem}_probabilities.tif")
        assert probs.shape == (2, *image.data.shape) and probs.dtype == np.float32
        with open(out / f"{stem}_objects.csv", newline="") as fh:
            header = next(csv.reader(fh))
        for column in ("label", "area", "centroid_y", "centroid_x", "bbox_y0", "bbox_x1", "eccentricity",
                       "solidity", "mean_intensity", "max_intensity"):
            assert column in header
        assert ("z" in header) == (image.axes == "ZYX")

    rows = {r["input"]: r for r in read_rows(out / "manifest.csv")}
    assert list(read_rows(out / "manifest.csv")[0]) == list(MANIFEST_COLUMNS)
    assert [r["input"] for r in read_rows(out / "manifest.csv")] == sorted(GOOD + BAD)
    for name in GOOD:
        assert rows[name]["status"] == "ok" and rows[name]["error"] == ""
        assert set(rows[name]["outputs"].split(";")) == {f"{name[:-4]}_labels.tif", f"{name[:-4]}_objects.csv",
                                                         f"{name[:-4]}_probabilities.tif"}
    for name in BAD:
        assert rows[name]["status"] == "failed" and rows[name]["outputs"] == ""
        assert not list(out.glob(f"{name[:-4]}_*"))
    assert "empty" in rows["empty.tif"]["error"]
    assert "TIFF" in rows["notes.tif"]["error"] and "TIFF" in rows["corrupt.tif"]["error"]
    assert "channel" in rows["rgb.tif"]["error"]
    assert "dimensions" in rows["six_d.tif"]["error"]
    failed = {e.path.split("/")[-1]: e for e in events if e.status == "failed"}
    assert set(failed) == set(BAD) and all(e.error for e in failed.values())

    summary_rows = read_rows(summary.summary_csv)
    assert [r["input"] for r in summary_rows] == list(GOOD)
    for r in summary_rows:
        n = len(read_rows(out / f"{r['input'][:-4]}_objects.csv"))
        assert int(r["object_count"]) == n
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_resume_after_interruption_skips_finished_files(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_folder(inp, bad=())
    gen = iter_run_batch(model_path, str(inp), str(out), workers=0)
    first = next(ev for ev in gen if isinstance(ev, FileDone))
    gen.close()  # interrupted after the first file
    assert first.status == "ok"
    rows = read_manifest(out / "manifest.csv")
    assert list(rows) == [GOOD[0]] and rows[GOOD[0]]["status"] == "ok"
    assert all((out / p).stat().st_size > 0 for p in rows[GOOD[0]]["outputs"].split(";"))
    assert not (out / f"{GOOD[1][:-4]}_labels.tif").exists()
    done = {p: (out / p).stat().st_mtime_ns for p in rows[GOOD[0]]["outputs"].split(";")}

    events, summary = drive(iter_run_batch(model_path, str(inp), str(out), workers=0, skip_existing=True))
    assert (summary.ok, summary.skipped, summary.failed) == (3, 1, 0)
    assert [e.status for e in events] == ["skipped", "ok", "ok", "ok"]
    assert {p: (out / p).stat().st_mtime_ns for p in done} == done  # finished outputs untouched
    rows = read_manifest(out / "manifest.csv")
    assert [r["status"] for r in rows.values()] == ["skipped", "ok", "ok", "ok"]
    assert len(read_rows(summary.summary_csv)) == 4


@pytest.mark.slow
def test_stop_event_then_resume_redoes_files_whose_outputs_are_gone(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_folder(inp, good=GOOD[:3], bad=())
    stop = threading.Event()
    gen = iter_run_batch(model_path, str(inp), str(out), workers=0, stop=stop)
    events = []
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, FileDone):
                events.append(ev)
                stop.set()
    except StopIteration as fin:
        summary = fin.value
    assert (summary.total, summary.ok) == (3, 1) and len(events) == 1
    assert list(read_manifest(summary.manifest)) == [GOOD[0]]

    (out / f"{GOOD[0][:-4]}_objects.csv").unlink()  # an output lost since: the ok row no longer holds
    events, summary = drive(iter_run_batch(model_path, str(inp), str(out), workers=0, skip_existing=True))
    assert [e.status for e in events] == ["ok", "ok", "ok"]
    assert (out / f"{GOOD[0][:-4]}_objects.csv").exists()


@pytest.mark.slow
def test_changed_input_or_new_outputs_are_redone(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_folder(inp, good=GOOD[:2], bad=())
    drive(iter_run_batch(model_path, str(inp), str(out), workers=0))
    img = tifffile.imread(inp / GOOD[0])
    tifffile.imwrite(inp / GOOD[0], img[:, ::-1])  # the user replaced an input
    events, _ = drive(iter_run_batch(model_path, str(inp), str(out), workers=0, skip_existing=True))
    assert {e.path.split("/")[-1]: e.status for e in events} == {GOOD[0]: "ok", GOOD[1]: "skipped"}
    events, _ = drive(iter_run_batch(model_path, str(inp), str(out), workers=0, skip_existing=True,
                                probabilities=True))
    assert [e.status for e in events] == ["ok", "ok"]  # asked for more outputs than were written
    model = tmp_path / "retrained.pt"
    model.write_bytes(Path(model_path).read_bytes())  # another model: every file is redone
    events, _ = drive(iter_run_batch(str(model), str(inp), str(out), workers=0, skip_existing=True,
                                probabilities=True))
    assert [e.status for e in events] == ["ok", "ok"]


@pytest.mark.slow
def test_recursive_mirrors_subfolders_and_never_reads_its_own_outputs(model_path, tmp_path):
    inp = tmp_path / "in"
    write_folder(inp / "day1", good=GOOD[:1], bad=())
    write_folder(inp / "day2", good=GOOD[1:2], bad=())
    out = inp / "results"  # inside the input folder
    _, summary = drive(iter_run_batch(model_path, str(inp), str(out), recursive=True, workers=0))
    assert summary.ok == 2
    assert (out / "day1" / f"{GOOD[0][:-4]}_labels.tif").exists()
    assert (out / "day2" / f"{GOOD[1][:-4]}_objects.csv").exists()
    _, again = drive(iter_run_batch(model_path, str(inp), str(out), recursive=True, workers=0, pattern="*.tif"))
    assert again.total == 2  # the labels written under results/ are not inputs
    assert list(read_manifest(summary.manifest)) == [f"day1/{GOOD[0]}", f"day2/{GOOD[1]}"]


@pytest.mark.slow
def test_inputs_differing_only_by_extension_get_distinct_outputs(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    img, _ = make_nuclei((64, 64), seed=5)
    tifffile.imwrite(inp / "x.tif", img)
    tifffile.imwrite(inp / "x.tiff", img[::-1])
    _, summary = drive(iter_run_batch(model_path, str(inp), str(out), pattern="*.tif*", workers=0,
                                 measurements=False))
    assert summary.ok == 2
    assert sorted(p.name for p in out.glob("*_labels.tif")) == ["x_labels.tif", "x_tiff_labels.tif"]
    assert int(read_rows(summary.summary_csv)[0]["object_count"]) >= 0


def test_bad_requests_are_refused_before_any_work(model_path, tmp_path):
    inp = tmp_path / "in"
    write_folder(inp, good=GOOD[:1], bad=())
    with pytest.raises(InputError, match="input folder"):
        drive(iter_run_batch(model_path, str(inp), str(inp), workers=0))
    with pytest.raises(InputError, match="no files matching"):
        drive(iter_run_batch(model_path, str(inp), str(tmp_path / "o1"), pattern="*.png", workers=0))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="checkpoint"):
        drive(iter_run_batch(str(tmp_path / "bad.pt"), str(inp), str(tmp_path / "o2"), workers=0))
    assert not (tmp_path / "o2").exists()
    with pytest.raises(InputError, match="not both"):
        drive(iter_run_batch(model_path, str(inp), str(tmp_path / "o3"), workers=1, scheduler="tcp://x:1"))
    # Output folder above the input folder: sub/sub/x.tif would write its labels onto the input sub/x_labels.tif.
    case = tmp_path / "case"
    write_folder(case / "sub" / "sub", good=GOOD[:1], bad=())
    tifffile.imwrite(case / "sub" / f"{GOOD[0][:-4]}_labels.tif", np.zeros((8, 8), np.uint8))
    before = hashes(case)
    with pytest.raises(InputError, match="overwrite an input"):
        drive(iter_run_batch(model_path, str(case / "sub"), str(case), recursive=True, workers=0))
    assert hashes(case) == before


def test_manifest_reader_ignores_a_line_cut_short(tmp_path):
    path = tmp_path / "manifest.csv"
    good = "a.tif,ok,,1.0,a_labels.tif,10,123,m.pt:1:2,2024-01-01T00:00:00+00:00,2024-01-01T00:00:01+00:00"
    path.write_text(",".join(MANIFEST_COLUMNS) + "\n" + good + ",scene=1,block=1024 halo=128\n"
                    + "b.tif,ok,,1.0,b_labels.tif,10,1")
    rows = read_manifest(path)
    assert list(rows) == ["a.tif"] and rows["a.tif"]["reading"] == "scene=1"
    assert rows["a.tif"]["blocks"] == "block=1024 halo=128"
    # manifests of earlier releases, without the blocks (and reading) columns: their rows read as the defaults
    path.write_text(",".join(MANIFEST_COLUMNS[:-1]) + "\n" + good + ",scene=1\n")
    assert read_manifest(path)["a.tif"]["blocks"] == "" and read_manifest(path)["a.tif"]["reading"] == "scene=1"
    path.write_text(",".join(MANIFEST_COLUMNS[:-2]) + "\n" + good + "\n")
    assert read_manifest(path)["a.tif"]["reading"] == ""
    path.write_text("garbage\x00\n")
    assert read_manifest(path) == {}
