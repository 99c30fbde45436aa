"""npe2 sample-data functions return valid LayerDataTuples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_seglab import _sample_data


def _check_tuples(layers, kinds):
    assert [t[2] for t in layers] == kinds
    for data, meta, kind in layers:
        assert isinstance(data, np.ndarray) and isinstance(meta, dict) and "name" in meta
        if kind == "labels":
            assert np.issubdtype(data.dtype, np.integer)
    shapes = {t[0].shape for t in layers}
    assert len(shapes) == 1
    return layers


def test_nuclei_with_scribbles():
    (img, meta, _), (scr, smeta, _) = _check_tuples(
        _sample_data.nuclei_with_scribbles(), ["image", "labels"]
    )
    assert img.shape == (256, 512) and meta["name"] == "nuclei"
    assert smeta["name"] == "scribbles" and set(np.unique(scr)) <= {0, 1, 2}


def test_nuclei_with_instances():
    (img, _, _), (inst, meta, _) = _check_tuples(
        _sample_data.nuclei_with_instances(), ["image", "labels"]
    )
    assert meta["name"] == "instances" and inst.max() > 50


def test_nuclei_stack():
    ((stack, meta, kind),) = _sample_data.nuclei_stack()
    assert kind == "image" and stack.shape == (8, 128, 128) and stack.dtype == np.uint16
    assert len(meta["scale"]) == stack.ndim


def test_generates_when_files_are_missing(monkeypatch):
    monkeypatch.setattr(_sample_data, "_read_sample", lambda name: None)
    _check_tuples(_sample_data.nuclei_with_scribbles(), ["image", "labels"])
    ((stack, _, _),) = _sample_data.nuclei_stack()
    assert stack.shape == (8, 128, 128)


def test_samples_name_their_axes_and_colour_the_scribbles():
    (_img, meta, _), (_scr, smeta, _) = _sample_data.nuclei_with_scribbles()
    assert meta["axis_labels"] == ("y", "x") and smeta["axis_labels"] == ("y", "x")
    colors = smeta["colormap"]
    assert colors[0] == "transparent" and colors[1] != colors[2]  # background and nucleus strokes differ
    ((_stack, stack_meta, _),) = _sample_data.nuclei_stack()
    assert stack_meta["axis_labels"] == ("z", "y", "x")


def test_the_stack_sample_shows_named_axes_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-seglab", "nuclei_stack")
    assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")


def _object_boxes(instances: np.ndarray) -> set[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of every object, y1/x1 exclusive, computed here from the pixels."""
    boxes = set()
    for i in np.unique(instances[instances > 0]):
        ys, xs = np.nonzero(instances == i)
        boxes.add((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
    return boxes


def _rectangle_boxes(rectangles) -> set[tuple[int, int, int, int]]:
    boxes = set()
    for corners in rectangles:
        assert corners.shape == (4, 2)
        (y0, x0), (y1, x1) = corners.min(0), corners.max(0)
        boxes.add((int(y0), int(x0), int(y1), int(x1)))
    return boxes


def test_nuclei_with_boxes_draws_one_rectangle_per_nucleus():
    (img, meta, kind), (rects, bmeta, bkind) = _sample_data.nuclei_with_boxes()
    assert (kind, bkind) == ("image", "shapes") and meta["name"] == "nuclei" and img.shape == (256, 512)
    _img, instances = _sample_data._train_image_and_instances()
    assert len(rects) == len(np.unique(instances)) - 1 > 50
    assert _rectangle_boxes(rects) == _object_boxes(instances)
    assert bmeta["name"] == "nuclei boxes" and bmeta["shape_type"] == "rectangle"
    assert list(bmeta["features"]["class"]) == [1] * len(rects)


def test_nuclei_with_boxes_generates_when_files_are_missing(monkeypatch):
    monkeypatch.setattr(_sample_data, "_read_sample", lambda name: None)
    (img, _, _), (rects, _, _) = _sample_data.nuclei_with_boxes()
    from napari_seglab.core.synthetic import make_nuclei

    _image, instances = make_nuclei((256, 512), seed=_sample_data._TRAIN_SEED)
    assert img.shape == instances.shape and _rectangle_boxes(rects) == _object_boxes(instances)


def test_the_boxes_sample_opens_in_napari_as_rectangles(make_napari_viewer):
    from napari_seglab.core.labels import read_boxes_csv, rows_from_rectangles

    viewer = make_napari_viewer()
    viewer.open_sample("napari-seglab", "nuclei_boxes")
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei boxes"]
    boxes = viewer.layers["nuclei boxes"]
    assert type(boxes).__name__ == "Shapes" and set(boxes.shape_type) == {"rectangle"}
    assert list(boxes.features["class"]) == [1] * len(boxes.data)
    # what a detector would train from is exactly the shipped annotation
    rows = rows_from_rectangles(boxes.data, boxes.shape_type, list(boxes.features["class"]), boxes.name)
    shipped = read_boxes_csv(Path(__file__).resolve().parents[1] / "sample_data" / "nuclei_boxes.csv")
    key = ("y0", "x0", "y1", "x1", "class")
    assert sorted(tuple(r[k] for k in key) for r in rows) == sorted(tuple(r[k] for k in key) for r in shipped)


def test_the_manifest_validates_and_lists_every_sample():
    from npe2 import PluginManifest

    root = Path(__file__).resolve().parents[1]
    manifest = PluginManifest.from_file(root / "napari.yaml")
    manifest.validate_imports()  # every python_name, the new sample's included, imports
    assert {s.key for s in manifest.contributions.sample_data} == {
        "nuclei_scribbles", "nuclei_instances", "nuclei_stack", "nuclei_boxes"}
    boxes = next(s for s in manifest.contributions.sample_data if s.key == "nuclei_boxes")
    assert boxes.display_name == "Nuclei + boxes"
    packaged = root / "src" / "napari_seglab" / "napari.yaml"
    assert packaged.read_text() == (root / "napari.yaml").read_text()
    # what napari finds through the installed package's entry point is this manifest (npe2 validate --imports)
    installed = PluginManifest.from_distribution("napari-seglab")
    installed.validate_imports()
    assert installed.name == manifest.name and installed.contributions == manifest.contributions
