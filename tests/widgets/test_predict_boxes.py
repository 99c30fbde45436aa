"""PredictWidget with a box detector: a Shapes layer of scored rectangles, no labels, a live box count."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from widget_helpers import WAIT_MS, click, dock

from napari_seglab.core.models import CheckpointMeta, ModelSpec, build_model, save_checkpoint


@pytest.fixture
def box_checkpoint(tmp_path):
    """An untrained RetinaNet whose candidates score 0.2-0.8, by anchor shape."""
    torch.manual_seed(0)
    spec = ModelSpec(family="retinanet", arch="retinanet_resnet18_fpn",
                     options={"box_score_thresh": 0.0})
    model, _ = build_model(spec)
    bias = model.detector.head.classification_head.cls_logits.bias
    with torch.no_grad():
        bias.copy_(torch.linspace(-1.5, 1.5, bias.numel()))
    path = tmp_path / "boxes.pt"
    save_checkpoint(path, model, CheckpointMeta(model=spec, label_mode="instances", patch=64))
    return path


def _count(status: str) -> int:
    match = re.search(r"(\d+) box(es)? with score >= ", status)
    assert match, status
    return int(match.group(1))


def test_a_box_model_adds_scored_rectangles_and_counts_them_live(make_napari_viewer, qtbot, tiny_nuclei,
                                                                 box_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(tiny_nuclei[0], name="cells", scale=(0.5, 0.5))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(box_checkpoint)
    assert "retinanet" in widget._about.value
    widget._device.value = "cpu"
    widget._tile.value = 64
    widget._threshold.value = 0.3

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert "cells labels" not in viewer.layers  # a box model gives no label image
    boxes = viewer.layers["cells boxes"]
    assert np.allclose(boxes.scale, image.scale)
    rows = widget.last_prediction.boxes
    assert widget.last_prediction.kind == "boxes" and rows
    at = {t: sum(r["score"] >= t for r in rows) for t in (0.3, 0.5)}
    assert 0 < at[0.5] < at[0.3]  # the scores straddle 0.5, so the threshold matters
    assert boxes.nshapes == at[0.3] and set(boxes.shape_type) == {"rectangle"}
    assert {"class", "score"} <= set(boxes.features.columns)
    assert min(boxes.features["score"]) >= 0.3 and set(boxes.features["class"]) == {1}
    status = widget._controls.status.value
    assert status.startswith("done in ") and _count(status) == at[0.3]
    assert not widget._correct.enabled  # nothing to paint over: the prediction is boxes

    widget._threshold.value = 0.5  # re-filters the rows kept; the count follows
    assert boxes.nshapes == at[0.5] and min(boxes.features["score"]) >= 0.5
    assert _count(widget._controls.status.value) == at[0.5]
    widget._threshold.value = 0.1  # lower than the click's threshold: the weaker boxes were kept for this
    assert boxes.nshapes == sum(r["score"] >= 0.1 for r in rows) >= at[0.3]
    assert _count(widget._controls.status.value) == boxes.nshapes
