"""The synthetic nuclei generator: reproducible, well-typed, scribbles consistent."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.synthetic import make_nuclei, make_scribbles


def test_deterministic_for_a_seed():
    a_img, a_inst = make_nuclei((64, 96), seed=3)
    b_img, b_inst = make_nuclei((64, 96), seed=3)
    c_img, _c_inst = make_nuclei((64, 96), seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_inst, b_inst)
    assert not np.array_equal(a_img, c_img)
    assert np.array_equal(make_scribbles(a_inst, seed=1), make_scribbles(b_inst, seed=1))


def test_dtype_shape_and_content():
    image, instances = make_nuclei((256, 512), seed=0)
    assert image.shape == instances.shape == (256, 512)
    assert image.dtype == np.uint16 and instances.dtype == np.uint16
    ids = np.unique(instances)
    assert ids[0] == 0 and ids.size > 60  # dense: many nuclei
    assert np.array_equal(ids, np.arange(ids.size))  # consecutive ids
    assert 0.2 < (instances > 0).mean() < 0.6
    # Nuclei are brighter than background on average, but not trivially so.
    assert image[instances > 0].mean() > image[instances == 0].mean() * 1.5


def test_3d_stack():
    stack, instances = make_nuclei((8, 64, 64), seed=1)
    assert stack.shape == instances.shape == (8, 64, 64)
    assert stack.dtype == np.uint16 and instances.max() > 3


def test_bad_arguments():
    with pytest.raises(InputError):
        make_nuclei((4, 4))
    with pytest.raises(InputError):
        make_nuclei((64, 64), coverage=1.5)
    with pytest.raises(InputError):
        make_scribbles(np.zeros((2, 8, 8), np.uint16))


def test_scribble_convention():
    _image, instances = make_nuclei((256, 512), seed=1)
    scribbles = make_scribbles(instances, seed=11)
    assert scribbles.dtype == np.uint8 and scribbles.shape == instances.shape
    assert set(np.unique(scribbles).tolist()) == {0, 1, 2}
    assert 0.02 <= (scribbles > 0).mean() <= 0.05
    assert (instances[scribbles == 2] > 0).all()
    assert (instances[scribbles == 1] == 0).all()
    # Strokes go into many different nuclei.
    assert np.unique(instances[scribbles == 2]).size >= 20
