"""PredictWidget on lazy, multiscale and large layers: block by block into an OME-Zarr, shown lazily.

The image layers here serve windows but refuse to be converted whole (:class:`Guarded`), so a test
fails if the dock ever calls ``np.asarray`` on the whole layer.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from widget_helpers import WAIT_MS, Guarded, click, dock

from napari_seglab._reader import napari_get_reader
from napari_seglab.core.events import BlockDone


def _events(widget) -> list:
    """Record the events the dock receives from its worker."""
    seen = []
    handler = widget._on_event

    def record(event):
        seen.append(event)
        handler(event)

    widget._on_event = record
    return seen


def _predict(widget, qtbot) -> None:
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def test_a_lazy_layer_goes_block_by_block_and_equals_the_whole_image(make_napari_viewer, qtbot, tiny_nuclei,
                                                                    tiny_model, tmp_path):
    viewer = make_napari_viewer()
    image = tiny_nuclei[0]  # (64, 96)
    plain = viewer.add_image(image, name="plain")
    guarded = Guarded(image)
    lazy = viewer.add_image(guarded, name="lazy", contrast_limits=(0, int(image.max())), scale=(0.5, 0.5),
                            translate=(4.0, 2.0))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget._tile.value = 64  # the same tile grid on both paths
    widget._block.value = 32  # 2 x 3 blocks

    widget.set_image(plain)
    _predict(widget, qtbot)
    whole = np.asarray(viewer.layers["plain labels"].data)
    assert whole.max() > 0  # the model finds something

    events = _events(widget)
    widget.set_image(lazy)
    _predict(widget, qtbot)
    layer = viewer.layers["lazy labels"]
    assert not isinstance(layer.data, np.ndarray)  # the store's zarr array, not a copy
    assert layer.data.shape == image.shape
    assert np.array_equal(np.asarray(layer.data[:]), whole)  # bit for bit the whole image's labels
    assert np.allclose(layer.scale, lazy.scale) and np.allclose(layer.translate, lazy.translate)
    # the normalisation sample (this small image whole, through a slice), then only tile windows
    assert len(guarded.worker_reads) > 2 and max(guarded.worker_reads[1:]) < image.size
    done = [e for e in events if isinstance(e, BlockDone) and e.stage == "predict"]
    assert [e.block for e in done] == [1, 2, 3, 4, 5, 6] and done[-1].blocks == 6
    status = widget._controls.status.value
    assert status.startswith("done in") and "6 blocks" in status, status
    # with no output chosen, the store is in the dock's temporary folder; SegLab's reader opens it
    store = layer.metadata["seglab_store"]
    assert str(widget._scratch[0]) in store
    assert napari_get_reader(store) is not None
    assert not widget._correct.enabled  # nothing in memory to correct


def test_a_multiscale_dask_layer_predicts_level_0_into_the_chosen_store(make_napari_viewer, qtbot, tiny_nuclei,
                                                                       tiny_model, tmp_path):
    da = pytest.importorskip("dask.array")
    viewer = make_napari_viewer()
    image = tiny_nuclei[0]
    levels = [da.from_array(Guarded(image), chunks=32, asarray=False), image[::2, ::2]]
    layer = viewer.add_image(levels, multiscale=True, name="scan", contrast_limits=(0, int(image.max())))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget.set_image(layer)
    widget._block.value = 64
    widget._probabilities.value = True
    widget._output.value = tmp_path / "scan_labels"  # ".ome.zarr" is added
    _predict(widget, qtbot)

    out = tmp_path / "scan_labels.ome.zarr"
    labels = viewer.layers["scan labels"]
    assert labels.metadata["seglab_store"] == str(out)
    assert labels.data.shape == image.shape  # level 0, not the level shown
    assert set(np.unique(np.asarray(labels.data[:]))) <= {0, 1}
    assert viewer.layers["scan probability 1"].data.shape == image.shape
    assert (tmp_path / "scan_labels_probabilities.ome.zarr").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_labels.ome.zarr", "scan_labels_probabilities.ome.zarr"]


def test_stop_between_blocks_leaves_no_store(make_napari_viewer, qtbot, tiny_nuclei, tiny_model, tmp_path):
    viewer = make_napari_viewer()
    image = tiny_nuclei[0]
    guarded = Guarded(image)
    layer = viewer.add_image(guarded, name="lazy", contrast_limits=(0, int(image.max())))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget._block.value = 32
    widget._output.value = tmp_path / "out.ome.zarr"
    handler = widget._on_event
    clicked = threading.Event()

    def stop_after_first_block(event):
        handler(event)
        if isinstance(event, BlockDone) and event.block == 1:
            click(widget._controls.stop_button)
            clicked.set()

    widget._on_event = stop_after_first_block
    # reads: 1 the normalisation sample, 2 the one tile of block 1; block 2 waits for the click
    guarded.gate = lambda n: n >= 3 and clicked.wait(60)
    widget.set_image(layer)
    _predict(widget, qtbot)
    assert widget._controls.status.value == "stopped: nothing was written"
    assert list(tmp_path.iterdir()) == []  # neither the store nor its hidden folder
    assert "lazy labels" not in viewer.layers
    assert widget._controls.run_button.enabled


def test_a_model_that_resamples_goes_block_by_block(make_napari_viewer, qtbot, tiny_nuclei, flows_model, errors):
    """A model at object scale 1.5: a multiscale layer goes block by block on the resampled grid, with the
    objects a numpy layer of the same image gets whole; split touching objects is refused for the large layer."""
    viewer = make_napari_viewer()
    image = tiny_nuclei[0]
    small = viewer.add_image(image, name="small")
    big = viewer.add_image([Guarded(image), image[::2, ::2]], multiscale=True, name="big",
                           contrast_limits=(0, int(image.max())))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(flows_model)
    widget._device.value = "cpu"

    widget.set_image(big)
    widget._split.value = True
    click(widget._controls.run_button)
    assert not widget.busy and "big labels" not in viewer.layers
    assert "too large to predict whole" in widget._controls.status.value
    assert "split touching objects" in widget._controls.status.value
    widget._split.value = False
    widget._block.value = 64
    refused = len(errors)
    _predict(widget, qtbot)
    labels = viewer.layers["big labels"]
    assert not isinstance(labels.data, np.ndarray) and labels.data.shape == image.shape
    assert widget._controls.status.value.startswith("done in") and "2 blocks" in widget._controls.status.value
    assert len(errors) == refused
    blocked = np.asarray(labels.data[...])

    widget.set_image(small)
    _predict(widget, qtbot)
    whole = viewer.layers["small labels"].data
    assert isinstance(whole, np.ndarray)  # the whole-image path
    assert widget._controls.status.value.startswith("done in")
    # the same objects up to renumbering (0 stays 0, ids map one to one)
    assert np.array_equal(blocked > 0, whole > 0)
    pairs = np.unique(np.stack([blocked.ravel(), whole.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_a_large_numpy_layer_goes_block_by_block(make_napari_viewer, qtbot, tiny_nuclei, tiny_model, monkeypatch):
    from napari_seglab._widgets import _lazy

    monkeypatch.setattr(_lazy, "LARGE_PIXELS", 32 * 32)  # "above 4096x4096" at test size
    viewer = make_napari_viewer()
    layer = viewer.add_image(tiny_nuclei[0], name="cells")
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget._block.value = 64
    _predict(widget, qtbot)
    labels = viewer.layers["cells labels"]
    assert not isinstance(labels.data, np.ndarray) and labels.data.shape == layer.data.shape
    assert "2 blocks" in widget._controls.status.value


def test_outputs_that_would_overwrite_are_refused(make_napari_viewer, tiny_nuclei, tiny_model, tmp_path, errors):
    from napari_seglab.core.io import OmeZarrWriter

    image = tiny_nuclei[0]
    store = tmp_path / "cells.ome.zarr"
    with OmeZarrWriter(store, image.shape, image.dtype, chunk=32, name="image") as out:
        out.array[:] = image
        out.finish()
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(store), plugin="napari-seglab")
    assert type(layer).__name__ == "Image" and not isinstance(layer.data, np.ndarray)
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget.set_image(layer)
    before = sorted(p.name for p in store.rglob("*"))

    widget._output.value = store  # the image's own store
    click(widget._controls.run_button)
    assert not widget.busy and "would overwrite the input" in errors[-1]
    (tmp_path / "taken.ome.zarr").write_text("a file, not a store")
    widget._output.value = tmp_path / "taken.ome.zarr"
    click(widget._controls.run_button)
    assert not widget.busy and "exists and is not a zarr store" in errors[-1]
    assert sorted(p.name for p in store.rglob("*")) == before
    assert (tmp_path / "taken.ome.zarr").read_text() == "a file, not a store"
    assert "cells labels" not in viewer.layers


def test_block_by_block_takes_a_model_that_resamples():
    from types import SimpleNamespace

    from napari_seglab._widgets._predict_blocks import check_blockable
    from napari_seglab.core.errors import InputError
    from napari_seglab.core.io import LazyImage

    model = SimpleNamespace(spec=SimpleNamespace(semantic=True, family="unet"), label_mode="scribbles",
                            info=SimpleNamespace(scale=1.0, pixel_size=(0.5, 0.5)))
    plane = np.zeros((8, 8), np.uint16)
    check_blockable(model, LazyImage(plane, "YX", pixel_size=(0.25, 0.25)))  # resampled by 0.5, block by block
    check_blockable(model, LazyImage(plane, "YX", pixel_size=(0.5, 0.5)))  # the model's own pixel size
    check_blockable(model, LazyImage(plane, "YX"))  # unknown: predicted as it is
    with pytest.raises(InputError, match="split touching objects is not available block-wise"):
        check_blockable(model, LazyImage(plane, "YX"), split_instances=True)


def test_the_temporary_output_folder_is_removed_when_napari_exits(tmp_path, monkeypatch):
    import atexit

    from napari_seglab._widgets import _lazy

    at_exit = []
    monkeypatch.setattr(atexit, "register", lambda func, *args, **kwargs: at_exit.append((func, args, kwargs)))
    scratch: list = []
    store = _lazy.output_path(None, "scan 1", scratch)
    assert _lazy.output_path(None, "scan 2", scratch).parent == store.parent  # one folder per dock, reused
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    assert len(at_exit) == 1
    func, args, kwargs = at_exit[0]
    func(*args, **kwargs)
    assert not scratch[0].exists()
    # a chosen output is the user's: never scheduled for removal
    _lazy.output_path(tmp_path / "mine", "scan", [])
    assert len(at_exit) == 1
