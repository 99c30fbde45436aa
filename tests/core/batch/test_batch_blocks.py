"""Large files in a batch go block by block: OME-Zarr labels, measurements block by block, resume, Dask blocks.

Tiny blocks (64 px) on small images stand in for 20k-pixel scans; the whole-image batch of the same
files with the same tile is the reference.
"""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import tifffile

from napari_seglab.core.batch import iter_run_batch, read_manifest
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import FileDone
from napari_seglab.core.events import drive as run
from napari_seglab.core.io import OmeZarrWriter, open_lazy
from napari_seglab.core.synthetic import make_nuclei


@pytest.fixture(scope="module")
def flows_ckpt(tmp_path_factory):
    """A random-weight flows-head U-Net checkpoint (objects arbitrary but fixed), as in the block tests."""
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(1)
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2,
                     options={"head": "flows"})
    model, _ = build_model(spec)
    meta = {"model": spec.to_dict(), "label_mode": "instances", "normalization": Normalization().to_dict()}
    return str(save_checkpoint(tmp_path_factory.mktemp("flows") / "m.pt", model, meta))


def write_inputs(folder):
    """A TIFF and an OME-Zarr (pixel size 0.5 µm) of synthetic nuclei; returns the images."""
    folder.mkdir(parents=True, exist_ok=True)
    a = make_nuclei((160, 192), seed=7)[0]
    b = make_nuclei((128, 160), seed=8)[0]
    tifffile.imwrite(folder / "a.tif", a, photometric="minisblack")
    with OmeZarrWriter(folder / "b.ome.zarr", b.shape, b.dtype, chunk=64, pixel_size=(0.5, 0.5), name="image") as w:
        w.array[...] = b
        w.finish()
    return a, b


def batch(model, inp, out, **kw):
    events = []
    summary = run(iter_run_batch(model, str(inp), str(out), pattern="*.tif;*.zarr", workers=0, tile=64, **kw),
                  lambda e: events.append(e) if isinstance(e, FileDone) else None)
    return events, summary


def table(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def by_place(rows):
    """Rows keyed by (bbox, area): object ids differ between the paths, places do not."""
    return {tuple(int(r[k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area")): r for r in rows}


def test_block_wise_batch_equals_the_whole_image_batch_and_resumes(flows_ckpt, tmp_path):
    inp = tmp_path / "in"
    write_inputs(inp)
    before = {p: p.stat().st_mtime_ns for p in inp.rglob("*") if p.is_file()}
    events, summary = batch(flows_ckpt, inp, tmp_path / "blocks", block=64, halo=64, probabilities=True)
    assert (summary.ok, summary.failed) == (2, 0), [e.error for e in events]
    out = tmp_path / "blocks"
    for stem in ("a", "b"):
        assert (out / f"{stem}_labels.ome.zarr" / "zarr.json").is_file()
        assert open_lazy(out / f"{stem}_probabilities.ome.zarr").shape[:2] == open_lazy(out / f"{stem}_labels.ome.zarr").shape
    assert not list(out.glob(".*tmp*"))  # nothing half-written left
    rows = read_manifest(out / "manifest.csv")
    assert rows["a.tif"]["blocks"] == "block=64 halo=64" and rows["b.ome.zarr"]["blocks"].startswith("block=64")
    # the b.ome.zarr store knows its pixel size: µm columns
    assert float(table(out / "b_objects.csv")[0]["area_um2"]) == pytest.approx(
        0.25 * float(table(out / "b_objects.csv")[0]["area"]))

    # the same TIFF whole: same objects (up to ids), same measurements
    whole_in = tmp_path / "whole_in"
    whole_in.mkdir()
    (whole_in / "a.tif").write_bytes((inp / "a.tif").read_bytes())
    _, s2 = batch(flows_ckpt, whole_in, tmp_path / "whole", block=0)
    assert s2.ok == 1 and (tmp_path / "whole" / "a_labels.tif").is_file()
    blocked, whole = by_place(table(out / "a_objects.csv")), by_place(table(tmp_path / "whole" / "a_objects.csv"))
    assert len(whole) > 5 and blocked.keys() == whole.keys()
    for key, row in whole.items():
        for col in ("centroid_y", "centroid_x", "mean_intensity", "max_intensity", "perimeter", "eccentricity"):
            assert float(blocked[key][col]) == pytest.approx(float(row[col]), rel=1e-6, abs=1e-6), col
    labels = open_lazy(out / "a_labels.ome.zarr").load()
    assert labels.max() == len(whole)

    # resume: both files proven done are skipped; the inputs were never touched
    events, summary = batch(flows_ckpt, inp, out, block=64, halo=64, probabilities=True, skip_existing=True)
    assert summary.skipped == 2 and summary.ok == 0
    assert {p: p.stat().st_mtime_ns for p in inp.rglob("*") if p.is_file()} == before


def test_automatic_choice_and_refusals(flows_ckpt, tmp_path, monkeypatch):
    import napari_seglab.core.predict as predict

    inp = tmp_path / "in"
    write_inputs(inp)
    # automatic: the OME-Zarr goes block by block; the TIFF too once its plane is "large"
    monkeypatch.setattr(predict, "AUTO_BLOCK_PIXELS", 160 * 192 - 1)
    _, summary = batch(flows_ckpt, inp, tmp_path / "auto")
    assert summary.ok == 2
    assert (tmp_path / "auto" / "a_labels.ome.zarr").is_dir() and (tmp_path / "auto" / "b_labels.ome.zarr").is_dir()
    monkeypatch.setattr(predict, "AUTO_BLOCK_PIXELS", 4096 * 4096)
    _, summary = batch(flows_ckpt, inp, tmp_path / "auto2")
    assert (tmp_path / "auto2" / "a_labels.tif").is_file() and (tmp_path / "auto2" / "b_labels.ome.zarr").is_dir()
    with pytest.raises(InputError, match="OME-Zarr inputs"):
        batch(flows_ckpt, inp, tmp_path / "never", block=0)
    with pytest.raises(InputError, match="not available block by block"):
        batch(flows_ckpt, inp, tmp_path / "choices", block=64, channel=0)
    assert not (tmp_path / "never").exists() and not (tmp_path / "choices").exists()


def test_a_stop_leaves_no_block_wise_output(flows_ckpt, tmp_path):
    inp = tmp_path / "in"
    write_inputs(inp)
    stop = threading.Event()
    gen = iter_run_batch(flows_ckpt, str(inp), str(tmp_path / "out"), pattern="*.zarr", workers=0, tile=64,
                         block=64, stop=stop)
    from napari_seglab.core.batch import _blocks

    real = _blocks.drive

    def stop_midway(g, on_event=None):
        def handle(event):
            stop.set()  # the first event of the block-wise prediction: stop between tiles
            if on_event:
                on_event(event)
        return real(g, handle)

    _blocks.drive = stop_midway
    try:
        summary = run(gen)
    finally:
        _blocks.drive = real
    assert summary.ok == 0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name not in ("manifest.csv", "summary.csv")]


@pytest.mark.timeout(180)
def test_block_tasks_on_dask_give_the_output_of_one_process(flows_ckpt, tmp_path):
    from distributed import LocalCluster

    inp = tmp_path / "in"
    write_inputs(inp)
    _, one = batch(flows_ckpt, inp, tmp_path / "one", block=64, halo=64)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        events = []
        summary = run(iter_run_batch(flows_ckpt, str(inp), str(tmp_path / "dask"), pattern="*.tif;*.zarr",
                                     scheduler=cluster.scheduler_address, tile=64, block=64, halo=64),
                      lambda e: events.append(e) if isinstance(e, FileDone) else None)
    assert summary.ok == 2, [e.error for e in events]
    assert "dask-block-tasks" in read_manifest(tmp_path / "dask" / "manifest.csv")["a.tif"]["blocks"]
    for stem in ("a", "b"):
        np.testing.assert_array_equal(open_lazy(tmp_path / "dask" / f"{stem}_labels.ome.zarr").load(),
                                      open_lazy(tmp_path / "one" / f"{stem}_labels.ome.zarr").load())
        assert table(tmp_path / "dask" / f"{stem}_objects.csv") == table(tmp_path / "one" / f"{stem}_objects.csv")


def test_an_ome_zarr_input_stamp_changes_with_its_metadata(tmp_path):
    import os

    from napari_seglab.core.batch._manifest import input_stamp

    write_inputs(tmp_path)
    store = tmp_path / "b.ome.zarr"
    first = input_stamp(store)
    meta = store / "zarr.json"
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))
    assert input_stamp(store) != first  # a rewritten store is redone on resume
