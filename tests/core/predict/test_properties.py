"""Property-based tests: label conversion and tiling never crash and stay aligned."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_seglab.core.data import Normalization
from napari_seglab.core.device import precision_for
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import drive
from napari_seglab.core.labels import (
    LABEL_MODES,
    get_mode,
    make_target,
    n_classes_for,
    validate_labels,
)
from napari_seglab.core.models import ModelSpec
from napari_seglab.core.predict import LoadedModel, iter_predict_image
from napari_seglab.core.tiling import TilePlan

label_dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, bool])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(LABEL_MODES), label_dtypes)
def test_label_conversion_never_crashes_and_stays_aligned(data, mode, dtype):
    shape = data.draw(st.tuples(st.integers(1, 24), st.integers(1, 24)))
    elements = st.integers(-2, 300) if dtype is not bool else st.booleans()
    if dtype == np.uint8:
        elements = st.integers(0, 255)
    elif dtype == np.uint16:
        elements = st.integers(0, 300)
    elif dtype == np.float32:
        elements = st.floats(-1, 5, width=32)
    labels = data.draw(arrays(dtype, shape, elements=elements))
    try:
        valid = validate_labels(labels, shape, mode)
    except InputError as exc:
        assert str(exc)  # refused with a message, never another exception
        return
    target = make_target(valid, mode)
    assert target.shape == labels.shape and target.dtype == np.int64
    k = n_classes_for([valid], mode)
    assert target.min() >= -1 and target.max() < k
    if get_mode(mode).sparse:  # 0 = not annotated: ignored, and nothing else is
        # ... except, in objects mode, the unpainted rim just outside a whole painted object: background
        read = getattr(get_mode(mode), "with_margin", lambda x: x)(valid)
        assert ((target == -1) == (read == 0)).all()
    else:
        assert (target >= 0).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(32, 2048), st.floats(0, 0.5))
def test_tile_plan_covers_axis_with_requested_overlap(length, tile, overlap):
    plan = TilePlan.balanced((length, 1), tile, overlap)
    size, starts = plan.size[0], plan.ys
    assert size <= max(tile, 1) or size == length
    assert size <= length
    assert starts[0] == 0 and starts[-1] + size == length
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all()
    if len(starts) > 1:
        assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) > 0
        assert max(s + size - b for s, b in zip(starts, starts[1:], strict=False)) >= int(round(tile * overlap)) - 1


class _Pointwise(torch.nn.Module):
    """A 'model' without receptive field: logits = 4 * (x - 0.5), so tiling must not change anything."""

    def forward(self, x):
        return 4 * (x[:, :1] - 0.5)


def _pointwise_model(channels=1):
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=channels, n_classes=2)
    meta = {"model": spec.to_dict(), "label_mode": "scribbles",
            "normalization": Normalization(per_image=False, lo=(0.0,) * channels, hi=(1.0,) * channels).to_dict()}
    dev = torch.device("cpu")
    return LoadedModel(model=_Pointwise(), meta=meta, device=dev, precision=precision_for(dev, training=True))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_tiled_prediction_is_aligned_and_equals_untiled_for_pointwise_model(data):
    ndim = data.draw(st.sampled_from([2, 3]))
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2))) + \
        tuple(data.draw(st.lists(st.integers(8, 150), min_size=2, max_size=2)))
    img = data.draw(arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    tile = data.draw(st.sampled_from([32, 64, 96]))
    overlap = data.draw(st.sampled_from([0.0, 0.25, 0.5]))
    lm = _pointwise_model()
    axes = "ZYX" if ndim == 3 else "YX"
    tiled = drive(iter_predict_image(lm, img, axes, tile=tile, overlap=overlap, probabilities=True))
    whole = drive(iter_predict_image(lm, img, axes, tile=4096, probabilities=True))
    assert tiled.labels.shape == img.shape
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    expected = (1 / (1 + np.exp(-4 * (img - 0.5)))) > 0.5
    decided = np.abs(img - 0.5) > 1e-3  # a pixel right at the threshold may go either way
    if decided.any():
        assert ((tiled.labels == 1) == expected)[decided].mean() > 0.999
