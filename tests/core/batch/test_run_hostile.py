"""Batch runs that fail, stop or are pointed at the wrong cluster keep earlier results (issue 14)."""

from __future__ import annotations

import os
import threading

import pytest
import tifffile

from napari_seglab.core.batch import iter_run_batch, read_manifest
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import Message, collect, drive

_drive = collect  # (events, result) of a core generator


@pytest.fixture
def folders(tmp_path, blobs):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a.tif", "b.tif", "c.tif"):
        tifffile.imwrite(inp / name, blobs[0])
    return inp, tmp_path / "out"


@pytest.mark.slow
def test_one_worker_says_it_runs_in_this_process(tiny_model, folders):
    inp, out = folders
    events, summary = _drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=1, device="cpu",
                                       pattern="a.tif"))
    lines = [e.text for e in events if isinstance(e, Message)]
    assert any("in this process" in line for line in lines), lines
    assert not any("cluster" in line for line in lines), lines
    assert summary.ok == 1


@pytest.mark.parametrize("scheduler", ["not an address", "tcp://", "inproc://nowhere"])
def test_a_scheduler_that_cannot_be_reached_leaves_the_output_folder_untouched(tiny_model, folders, scheduler):
    inp, out = folders
    with pytest.raises(InputError, match="could not connect"):
        drive(iter_run_batch(str(tiny_model), str(inp), str(out), scheduler=scheduler))
    assert not out.exists()


def test_a_scheduler_file_that_is_not_one(tiny_model, folders, tmp_path):
    inp, out = folders
    for content in ("", "{}", "[1, 2]", '{"address": 5}', "\0\1\2"):
        fake = tmp_path / "sched.json"
        fake.write_text(content)
        with pytest.raises(InputError, match="scheduler file"):
            drive(iter_run_batch(str(tiny_model), str(inp), str(out), scheduler=str(fake)))
        assert not out.exists()


@pytest.mark.slow
def test_later_runs_never_truncate_the_manifest(tiny_model, folders):
    inp, out = folders
    drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu"))
    first = read_manifest(out / "manifest.csv")
    summary_before = (out / "summary.csv").read_text().splitlines()
    assert sorted(first) == ["a.tif", "b.tif", "c.tif"]

    stop = threading.Event()
    stop.set()  # a run stopped before any file: nothing redone, nothing lost
    drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu", stop=stop))
    assert read_manifest(out / "manifest.csv") == first
    assert sorted((out / "summary.csv").read_text().splitlines()) == sorted(summary_before)

    # a run over one file keeps the rows of the others
    drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu", pattern="b.tif"))
    rows = read_manifest(out / "manifest.csv")
    assert sorted(rows) == ["a.tif", "b.tif", "c.tif"]
    assert rows["a.tif"] == first["a.tif"] and rows["b.tif"]["finished"] >= first["b.tif"]["finished"]
    assert len((out / "summary.csv").read_text().splitlines()) == 4

    # and --skip-existing afterwards skips all three
    events, summary = _drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu",
                                       skip_existing=True))
    assert summary.skipped == 3


def test_a_file_that_vanishes_after_the_scan_fails_alone(tiny_model, folders, monkeypatch):
    import napari_seglab.core.batch._manifest as mf

    inp, out = folders
    real_stamp = mf.input_stamp

    def vanishing(path):
        if os.path.basename(path) == "b.tif":
            os.unlink(path)
        return real_stamp(path)

    monkeypatch.setattr(mf, "input_stamp", vanishing)
    summary = drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu"))
    assert (summary.ok, summary.failed) == (2, 1)
    assert read_manifest(out / "manifest.csv")["b.tif"]["status"] == "failed"


def test_names_that_are_not_utf8_keep_every_csv_valid(tiny_model, folders, blobs):
    inp, out = folders
    tifffile.imwrite(os.fsdecode(os.path.join(os.fsencode(inp), b"\xff\xfe;x.tif")), blobs[0])
    summary = drive(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu"))
    assert summary.ok == 4
    for name in ("manifest.csv", "summary.csv"):
        text = (out / name).read_bytes().decode("utf-8")
        assert "\\xff\\xfe\\;x.tif" in text
    assert os.fsdecode(b"\xff\xfe;x.tif") in read_manifest(out / "manifest.csv")
