"""Out of memory while predicting: every family halves the tile, then moves to the CPU, with a warning.

The dense families go through :func:`iter_plane` (tests/core/test_tiling_plan.py checks them); these
tests check that Mask R-CNN and a box detector follow the same policy. A GPU is never needed: the
tile call of the detectors (``_detector.detect_tile``) is replaced by one that raises CUDA's
out-of-memory error the first N times, and a model on the CPU is labelled "cuda" the way a cached
GPU model is held.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.device import precision_for
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import Message, TileDone, collect, drive
from napari_seglab.core.models import CheckpointMeta, ModelSpec, _detector, build_model, get_family
from napari_seglab.core.predict import LoadedModel, iter_predict_image

CPU = torch.device("cpu")
SPECS = {
    # fewer region proposals than the defaults keep Mask R-CNN quick on the CPU
    "maskrcnn": ModelSpec(family="maskrcnn", arch="maskrcnn_resnet50_fpn", in_channels=1, n_classes=2,
                          options={"patch": 64, "rpn_pre_nms_top_n": 200, "rpn_post_nms_top_n": 100}),
    # the CPU-light ResNet-18 FPN box detector; every candidate scored, at most 20 per tile
    "retinanet": ModelSpec(family="retinanet", arch=get_family("retinanet").default_arch, in_channels=1,
                           n_classes=2, options={"box_score_thresh": 0.0, "detections_per_img": 20}),
}
# Mask R-CNN (resnet50) takes seconds per case on a CPU: slow; RetinaNet keeps the path in make test-fast
FAMILIES = [pytest.param(name, id=name, marks=pytest.mark.slow if name == "maskrcnn" else ())
            for name in SPECS]
#: an untrained Mask R-CNN or RetinaNet (with its class bias zeroed) scores its candidates near 0.5
THRESHOLD = 0.3


@pytest.fixture(scope="module", params=FAMILIES)
def network(request):
    """(family, untrained network in eval mode, metadata)."""
    torch.manual_seed(0)
    spec = SPECS[request.param]
    model, _ = build_model(spec)
    head = getattr(model.detector, "head", None)
    if head is not None:  # RetinaNet's prior bias scores every box near 0.01
        torch.nn.init.zeros_(head.classification_head.cls_logits.bias)
    model.eval()
    return request.param, model, CheckpointMeta(model=spec, label_mode="instances", patch=64)


def image(planes: int = 1) -> np.ndarray:
    """(Z, Y, X) of 160 x 160 planes: one tile at the 256 px asked for, four tiles at 128 px."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:160, :160]
    plane = rng.normal(100, 5, (160, 160)).astype(np.float32)
    for cy, cx in ((30, 40), (80, 80), (120, 50), (60, 135)):  # bright discs, one on the 128 px tiles' overlap
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] += 150
    return np.stack([plane] * planes)


def loaded(network, device: str = "cpu") -> LoadedModel:
    """The network as prediction holds it; ``device`` "cuda" only labels it (nothing moves)."""
    _, model, meta = network
    return LoadedModel(model=model, meta=meta, device=torch.device(device), precision=precision_for(CPU))


def predict(lm: LoadedModel, img: np.ndarray, tile: int):
    return collect(iter_predict_image(lm, img, "ZYX", tile=tile, overlap=0.25, score_threshold=THRESHOLD))


@pytest.fixture
def short_of_memory(monkeypatch):
    """Make the first ``n`` tile calls run out of memory; returns (set n, calls as (device, tile side))."""
    real = _detector.detect_tile
    calls: list[tuple[str, int]] = []
    budget = {"fails": 0}

    def detect_tile(lm, chw, detect):
        calls.append((lm.device.type, chw.shape[-1]))
        if budget["fails"] > 0:
            budget["fails"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        assert lm.device.type == "cpu", "a tile reached the (absent) GPU"
        return real(lm, chw, detect)

    monkeypatch.setattr(_detector, "detect_tile", detect_tile)

    def fail(n: int):
        budget["fails"] = n
        calls.clear()
        return calls

    return fail


def warnings_of(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message) and e.level == "warning"]


def test_the_tile_halves_after_an_out_of_memory_error_and_the_result_is_whole(network, short_of_memory):
    expected = drive(iter_predict_image(loaded(network), image(), "ZYX", tile=128, overlap=0.25,
                                        score_threshold=THRESHOLD))
    assert expected.boxes, "an untrained detector should still find something to compare"
    calls = short_of_memory(1)
    events, pred = predict(loaded(network), image(), tile=256)
    assert calls == [("cpu", 160)] + [("cpu", 128)] * 4  # the whole plane, then 4 tiles of half the side
    assert warnings_of(events) == ["out of memory: retrying with 128px tiles"]
    # the retry starts the plane again: its tiles are counted afresh and every one is there
    assert [(e.tile, e.tiles) for e in events if isinstance(e, TileDone)][-4:] == [(i, 4) for i in range(1, 5)]
    assert pred.boxes == expected.boxes and pred.kind == expected.kind
    np.testing.assert_array_equal(pred.labels, expected.labels)


def test_repeated_out_of_memory_moves_to_the_cpu_for_that_call_only(network, short_of_memory):
    family, model, _ = network
    stack = image(planes=2)
    first = drive(iter_predict_image(loaded(network), stack[:1], "ZYX", tile=128, overlap=0.25,
                                     score_threshold=THRESHOLD))
    second = drive(iter_predict_image(loaded(network), stack[:1], "ZYX", tile=256, overlap=0.25,
                                      score_threshold=THRESHOLD))
    cached = loaded(network, "cuda")  # as the Predict dock or a batch worker holds a GPU model
    precision = cached.precision
    calls = short_of_memory(2)
    events, pred = predict(cached, stack, tile=256)
    # 256 px (one 160 px tile) and 128 px fail on the "GPU"; the plane then runs on a CPU copy,
    # and the next plane of the call stays on it, at the tile asked for
    assert calls == [("cuda", 160), ("cuda", 128)] + [("cpu", 128)] * 4 + [("cpu", 160)]
    assert warnings_of(events) == ["out of memory: retrying with 128px tiles",
                                   "out of GPU memory even with small tiles: continuing on the CPU"]
    assert [r for r in pred.boxes if r["plane"] == "0"] == [{**r, "plane": "0"} for r in first.boxes]
    assert [r for r in pred.boxes if r["plane"] == "1"] == [{**r, "plane": "1"} for r in second.boxes]
    np.testing.assert_array_equal(pred.labels, np.concatenate([first.labels, second.labels]))
    if family == "maskrcnn":
        assert pred.labels.any()
    # the caller's model is left as it was: the next call starts on its device again
    assert cached.device.type == "cuda" and cached.model is model and cached.precision is precision
    assert next(model.parameters()).device == CPU


def test_out_of_memory_on_the_cpu_with_the_smallest_tiles_is_a_clear_error(network, short_of_memory):
    short_of_memory(10)
    with pytest.raises(InputError, match="out of memory even with 128px tiles"):
        predict(loaded(network), image(), tile=256)


def test_an_error_that_is_not_out_of_memory_is_not_retried(network, monkeypatch):
    calls = []

    def broken(lm, chw, detect):
        calls.append(chw.shape[-1])
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    monkeypatch.setattr(_detector, "detect_tile", broken)
    with pytest.raises(RuntimeError, match="CUDNN_STATUS"):
        predict(loaded(network), image(), tile=256)
    assert calls == [160]
