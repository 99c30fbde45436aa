"""Edge snapping of a foreground probability (core/refine.py)."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import drive
from napari_seglab.core.objects import SPLIT_THRESHOLD, instances_from_foreground, snap_to_edges

SAMPLE = Path(__file__).resolve().parents[3] / "sample_data"


def overgrown_prediction():
    """The bundled test image (normalised) with its true nuclei, and the foreground probability a
    scribble-trained network gives: every nucleus grown by 2 px and blurred, so neighbours merge."""
    image = tifffile.imread(SAMPLE / "nuclei_test.tif").astype(np.float32)
    truth = tifffile.imread(SAMPLE / "nuclei_test_instances.tif")
    lo, hi = np.percentile(image, [1, 99.8])
    guide = np.clip((image - lo) / (hi - lo), 0, 1)
    prob = ndi.gaussian_filter(ndi.binary_dilation(truth > 0, iterations=2).astype(np.float32), 2.0)
    return guide, prob, truth


def test_snapping_brings_back_the_seams_between_touching_nuclei():
    guide, prob, truth = overgrown_prediction()
    raw = match_instances(instances_from_foreground(prob, threshold=0.5), truth)
    raw_strict = match_instances(instances_from_foreground(prob, threshold=SPLIT_THRESHOLD), truth)
    snapped = match_instances(instances_from_foreground(snap_to_edges(prob, guide), threshold=SPLIT_THRESHOLD),
                              truth)
    # more nuclei found whole, with outlines closer to the truth, than either split of the raw map
    assert snapped["ap50"] > max(raw["ap50"], raw_strict["ap50"]) + 0.1
    assert snapped["ap75"] > max(raw["ap75"], raw_strict["ap75"])
    assert snapped["dice"] > max(raw["dice"], raw_strict["dice"])


def test_a_flat_image_only_smooths_the_probability():
    prob = np.zeros((40, 40), np.float32)
    prob[10:30, 10:30] = 1
    out = snap_to_edges(prob, np.full((40, 40), 0.5, np.float32), radius=2)
    box = ndi.uniform_filter(ndi.uniform_filter(prob, 5, mode="reflect"), 5, mode="reflect")
    np.testing.assert_allclose(out, box, atol=1e-5)


def test_channels_are_averaged_and_shapes_checked():
    image, prob, _ = overgrown_prediction()
    one = snap_to_edges(prob, image)
    two = snap_to_edges(prob, np.stack([image, image]))
    np.testing.assert_allclose(one, two, atol=1e-6)
    with pytest.raises(InputError, match="does not match"):
        snap_to_edges(prob, image[:10])
    with pytest.raises(InputError, match="radius"):
        snap_to_edges(prob, image, radius=0)


def test_predict_splits_semantic_foreground_on_the_image_edges():
    """split_instances with the image as guide (what predict_image passes) finds the nuclei the raw split merges."""
    from napari_seglab.core.predict import labels_from_probabilities

    guide, prob, truth = overgrown_prediction()
    probs = np.stack([1 - prob, prob])
    plain = labels_from_probabilities(probs, "scribbles", split_instances=True)
    snapped = labels_from_probabilities(probs, "scribbles", split_instances=True, guide=guide[None])
    assert match_instances(snapped, truth)["ap50"] > match_instances(plain, truth)["ap50"] + 0.1
    # without splitting, the semantic mask is the plain 0.5 threshold, guide or not
    np.testing.assert_array_equal(labels_from_probabilities(probs, "scribbles"), (prob > 0.5).astype(np.int32))


@pytest.mark.slow
def test_predict_image_hands_the_normalised_image_to_the_split(tiny_model, blobs, monkeypatch):
    from napari_seglab.core.predict import _image as predict

    img = blobs[0]
    seen = []
    real = predict.labels_from_probabilities

    def spy(probs, mode, *, guide=None, **kwargs):
        seen.append(guide)
        return real(probs, mode, guide=guide, **kwargs)

    monkeypatch.setattr(predict, "labels_from_probabilities", spy)
    lm = predict.load_model(tiny_model, "cpu")
    out = drive(predict.iter_predict_image(lm, img, split_instances=True))
    assert out.kind == "instances"
    guide = seen[-1]
    assert guide.shape == (1, *img.shape) and guide.min() >= 0 and guide.max() <= 1
    assert np.corrcoef(guide[0].ravel(), img.ravel())[0, 1] > 0.99  # the image itself, rescaled
    drive(predict.iter_predict_image(lm, img))
    assert seen[-1] is None  # no split, no guide
