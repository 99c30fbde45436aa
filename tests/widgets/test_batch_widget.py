"""BatchWidget in a real viewer: a folder of two TIFFs end to end, then open a result."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from widget_helpers import WAIT_MS, click, dock

pytest.importorskip("napari_seglab.core.batch")


def test_batch_runs_a_folder_and_opens_a_result(make_napari_viewer, qtbot, tmp_path, tiny_nuclei, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", tiny_nuclei[0])
    tifffile.imwrite(src / "b.tif", np.ascontiguousarray(tiny_nuclei[0][::-1]))
    viewer = make_napari_viewer()
    widget = dock(viewer, "Batch")
    widget._input.value = src
    widget._output.value = out
    widget._model.value = tiny_model
    widget._device.value = "cpu"
    widget._scheduler.value = "sync"  # in this process: no Dask workers to start in a test

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert widget.summary is not None and widget.summary.ok == 2 and widget.summary.failed == 0
    assert "2 ok" in widget._summary.value
    assert (out / "a_labels.tif").is_file() and (out / "b_labels.tif").is_file()
    assert len(widget.results) == 2 and widget._result_choice.value is widget.results[-1]
    assert widget._controls.run_button.enabled

    widget._result_choice.value = widget.results[0]
    click(widget._open)
    stem = widget.results[0].path.rsplit("/", 1)[-1][:-4]
    assert viewer.layers[stem].data.shape == (64, 96)
    assert viewer.layers[f"{stem} labels"].data.shape == (64, 96)


def test_missing_folders_are_reported(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Batch")
    click(widget._controls.run_button)
    assert not widget.busy and "input folder" in errors[-1]
    widget._input.value = tmp_path
    click(widget._controls.run_button)
    assert not widget.busy and "output folder" in errors[-1]


def test_failed_files_and_their_reasons_are_listed(make_napari_viewer, qtbot, tmp_path, tiny_nuclei,
                                                   tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    tifffile.imwrite(src / "good.tif", tiny_nuclei[0])
    (src / "broken.tif").write_text("not a tiff")
    viewer = make_napari_viewer()
    widget = dock(viewer, "Batch")
    widget._input.value = src
    widget._output.value = out
    widget._model.value = tiny_model
    widget._device.value = "cpu"
    widget._scheduler.value = "sync"
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert widget.summary.ok == 1 and widget.summary.failed == 1
    assert [done.path.rsplit("/", 1)[-1] for done in widget.failures] == ["broken.tif"]
    listed = widget._failed.value
    assert "broken.tif" in listed and "not a valid TIFF" in listed and "good.tif" not in listed
    assert not widget._failed.native.isHidden() and "failed files below" in widget._summary.value


def test_an_ome_zarr_in_the_folder_goes_block_by_block_and_opens_lazily(make_napari_viewer, qtbot, tmp_path,
                                                                         tiny_nuclei):
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.io import OmeZarrWriter
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(1)  # a random-weight flows model: block-wise needs an instance (or multi-class) model
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2,
                     options={"head": "flows"})
    meta = {"model": spec.to_dict(), "label_mode": "instances", "normalization": Normalization().to_dict()}
    model = save_checkpoint(tmp_path / "flows.pt", build_model(spec)[0], meta)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", tiny_nuclei[0])
    with OmeZarrWriter(src / "scan.ome.zarr", tiny_nuclei[0].shape, np.uint16, chunk=32, name="image") as w:
        w.array[...] = tiny_nuclei[0]
        w.finish()
    viewer = make_napari_viewer()
    widget = dock(viewer, "Batch")
    widget._input.value = src
    widget._output.value = out
    widget._model.value = model
    widget._pattern.value = "*.tif;*.zarr"
    widget._device.value = "cpu"
    widget._scheduler.value = "sync"

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert widget.summary is not None and widget.summary.ok == 2, widget._failed.value
    assert (out / "a_labels.tif").is_file() and (out / "scan_labels.ome.zarr" / "zarr.json").is_file()
    assert (out / "scan_objects.csv").is_file()
    done = next(d for d in widget.results if d.path.endswith("scan.ome.zarr"))
    widget.open_result(done)
    labels = viewer.layers["scan labels"]
    assert not isinstance(labels.data, np.ndarray)  # the store's zarr array, not a copy
    assert labels.data.shape == (64, 96) and viewer.layers["scan"].data.shape == (64, 96)
