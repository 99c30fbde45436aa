"""Batch prediction on Dask: an embedded LocalCluster and a real scheduler + worker started by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile

from napari_seglab.core.batch import iter_run_batch, read_manifest
from napari_seglab.core.events import FileDone
from napari_seglab.core.events import drive as run
from napari_seglab.core.io import read_image
from napari_seglab.core.synthetic import make_nuclei

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def model_path(random_unet):
    """The session's random-weight U-Net checkpoint: the batch plumbing needs no trained model."""
    return str(random_unet)


def write_folder(folder, n_good=3, broken=True):
    """``n_good`` small uint16 images (one a 3-plane stack) and a text file named .tif."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        shape = (3, 64, 64) if i == 1 else (64, 64)
        img = make_nuclei((8, 64, 64), seed=i)[0][:3] if len(shape) == 3 else make_nuclei(shape, seed=i)[0]
        tifffile.imwrite(folder / f"img{i}.tif", img, photometric="minisblack")
    if broken:
        (folder / "broken.tif").write_text("not an image")


def drive(gen, on_event=None):
    """(FileDone events, BatchSummary); ``on_event`` sees each FileDone as it comes."""
    events: list[FileDone] = []

    def keep(ev):
        if isinstance(ev, FileDone):
            events.append(ev)
            if on_event:
                on_event(ev)

    return events, run(gen, keep)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_cluster_one_worker_then_stop_and_resume(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_folder(inp, n_good=4, broken=True)
    events, summary = drive(iter_run_batch(model_path, str(inp), str(out), workers=1))
    assert (summary.total, summary.ok, summary.failed) == (5, 4, 1)
    assert sorted(e.index for e in events) == [1, 2, 3, 4, 5]
    rows = read_manifest(summary.manifest)
    assert rows["broken.tif"]["status"] == "failed" and "TIFF" in rows["broken.tif"]["error"]
    stack = read_image(out / "img1_labels.tif")
    assert stack.axes == "ZYX" and stack.data.shape == (3, 64, 64)

    # Stop after the first file: files not started are cancelled, the one running finishes.
    stop = threading.Event()
    out2 = tmp_path / "out2"
    events, summary = drive(iter_run_batch(model_path, str(inp), str(out2), workers=1, stop=stop),
                            on_event=lambda ev: stop.set())
    assert 1 <= summary.ok + summary.failed <= 2 < summary.total
    rows = read_manifest(summary.manifest)
    assert len(rows) == len(events)
    for row in rows.values():  # a row says ok only with its outputs complete on disk
        assert row["status"] == "failed" or all((out2 / p).stat().st_size for p in row["outputs"].split(";"))
    events, again = drive(iter_run_batch(model_path, str(inp), str(out2), workers=0, skip_existing=True))
    assert again.skipped == sum(r["status"] == "ok" for r in rows.values())
    assert again.ok + again.skipped == 4


@pytest.fixture
def dask_cluster(tmp_path):
    """A dask scheduler and one worker started as separate processes on 127.0.0.1."""
    from distributed import Client

    sched_file = tmp_path / "scheduler.json"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            if procs[0].poll() is not None:
                pytest.fail("dask scheduler exited early")
            time.sleep(0.1)  # polling for a file another process writes
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
             "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_scheduler_and_worker_processes(model_path, tmp_path, dask_cluster):
    from distributed import Client

    inp, out = tmp_path / "in", tmp_path / "out"
    write_folder(inp, n_good=3, broken=True)
    events, summary = drive(iter_run_batch(model_path, str(inp), str(out), scheduler=dask_cluster))
    assert (summary.total, summary.ok, summary.failed) == (4, 3, 1)
    assert {e.path.rsplit("/", 1)[-1] for e in events if e.status == "ok"} == {"img0.tif", "img1.tif", "img2.tif"}
    labels = tifffile.imread(out / "img0_labels.tif")
    assert labels.shape == (64, 64) and np.issubdtype(labels.dtype, np.integer)
    assert len(read_manifest(summary.manifest)) == 4

    def loaded(dask_worker=None):
        from napari_seglab.core.batch import _task as batch

        return batch.model_loads()

    with Client(dask_cluster, timeout="30s") as client:
        assert list(client.run(loaded).values()) == [1]  # the model was loaded once on the worker
