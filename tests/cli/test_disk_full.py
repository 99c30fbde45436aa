"""A disk that fills up during a batch or a training run (issue 26), on a small tmpfs mounted for the test.

What a user relies on: the run stops with one clear line (exit 2), no partial
file is left under any name (nor a hidden temporary), the manifest and the
best checkpoint written before stay intact, and ``--skip-existing`` resumes
exactly the unfinished files once space is freed. Mounting needs root: the
tests skip cleanly where it is not permitted.
"""

from __future__ import annotations

import csv
import os
import subprocess

import numpy as np
import pytest
import tifffile
import torch
from boxfamily import bright_squares, register

from napari_seglab.cli import main


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs at tmp_path/disk (skips where mounting is not permitted); unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(disk, leave: int = 0):
    """Fill ``disk`` up to ``leave`` free bytes with a filler file; returns it."""
    filler = disk / "filler.bin"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(filler, "ab") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
            fh.flush()
        except OSError:
            pass
    return filler


def leftovers(folder) -> list[str]:
    """Hidden temporaries and empty files under ``folder``: what a half-done write would leave."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and (".tmp-" in p.name or p.stat().st_size == 0))


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("seglab: error: ")]
    assert len(err) == 1, err
    return err[0]


def test_a_batch_whose_disk_fills_up_stops_and_resumes(tmp_path, small_disk, tiny_model, blobs, capsys):
    img = blobs[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(12):
        tifffile.imwrite(inputs / f"img{i:02d}.tif", np.roll(img, i, axis=1))
    out = small_disk / "out"
    argv = ["batch", "--model", str(tiny_model), "--input-dir", str(inputs), "--output-dir", str(out),
            "--workers", "0", "--device", "cpu"]
    filler = fill(small_disk, leave=24 * 1024)  # room for a file or two, not for twelve
    code = main(argv)
    line = error_line(capsys)
    assert code == 2 and "no space left" in line and "--skip-existing" in line, line
    assert leftovers(small_disk) == []
    with open(out / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    done = [r for r in rows if r["status"] == "ok"]
    assert 0 < len(done) < 12
    for row in done:  # every file the manifest calls done is whole
        for name in row["outputs"].split(";"):
            assert (out / name).stat().st_size > 0
    filler.unlink()  # space freed: the rest is done, the finished files skipped
    assert main([*argv, "--skip-existing"]) == 0
    with open(out / "manifest.csv", encoding="utf-8") as fh:
        again = {r["input"]: r["status"] for r in csv.DictReader(fh)}
    assert len(again) == 12 and sorted(again.values()).count("skipped") == len(done)
    assert leftovers(small_disk) == []


def test_a_training_run_whose_disk_fills_up_keeps_the_best_model(tmp_path, small_disk, monkeypatch, capsys):
    register(monkeypatch)
    img, rows = bright_squares((64, 64), ((8, 8, 10), (30, 40, 12)))
    tifffile.imwrite(tmp_path / "img.tif", img)
    boxes = tmp_path / "b.csv"
    boxes.write_text("y0,x0,y1,x1\n" + "".join(f"{r['y0']},{r['x0']},{r['y1']},{r['x1']}\n" for r in rows))
    model = small_disk / "m.pt"
    argv = ["train", "--image", str(tmp_path / "img.tif"), "--boxes", str(boxes), "--model-out", str(model),
            "--family", "boxnet", "--epochs", "2", "--steps-per-epoch", "1", "--patch", "32", "--batch-size", "2",
            "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    before = model.read_bytes()
    fill(small_disk)
    code = main([*argv, "--seed", "1"])
    line = error_line(capsys)
    assert code == 2 and "no space left on the device" in line, line
    assert model.read_bytes() == before  # the best model of the earlier run, whole
    torch.load(model, weights_only=True)
    assert leftovers(small_disk) == []
