"""SegLab never reuses, overwrites or removes a layer the user made, even one named like its outputs."""

import numpy as np

from napari_seglab import _layers


def _rect(y0, x0, y1, x1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)


def test_drawn_boxes_named_like_the_output_survive_a_prediction(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 40), np.uint16), name="cells")
    drawn = viewer.add_shapes([_rect(1, 1, 9, 9), _rect(20, 20, 30, 30)], shape_type="rectangle",
                              name="cells boxes")
    rows = [{"y0": 5, "x0": 5, "y1": 15, "x1": 15, "class": 1, "score": 0.9, "plane": ""}]

    out = _layers.show_boxes(viewer, rows, "cells boxes")
    again = _layers.show_boxes(viewer, rows, "cells boxes")  # a second prediction updates SegLab's own layer

    assert drawn in viewer.layers and len(drawn.data) == 2  # the user's boxes are untouched
    assert out is not drawn and again is out and len(out.data) == 1
    assert len([layer for layer in viewer.layers if layer.name.startswith("cells boxes")]) == 2


def test_a_user_labels_layer_named_like_the_prediction_is_kept(make_napari_viewer):
    viewer = make_napari_viewer()
    mine = viewer.add_image(np.ones((16, 16), np.float32), name="cells prediction")  # another kind, same name
    painted = viewer.add_labels(np.ones((16, 16), np.uint8), name="cells preview")

    _layers.show_labels(viewer, np.zeros((16, 16), np.int32), "cells prediction", role="prediction")
    assert not _layers.remove_layer(viewer, "cells preview")

    assert mine in viewer.layers and painted in viewer.layers and painted.data.all()
