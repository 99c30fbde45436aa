"""A z-stack with only a few painted planes trains: unpainted planes teach nothing (0 = not annotated)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.labels import IGNORE
from napari_seglab.core.synthetic import make_nuclei_3d, make_scribbles
from napari_seglab.core.train._data import prepare_training_data

PAINTED = (2, 5, 8)


@pytest.fixture(scope="module")
def stack():
    return make_nuclei_3d((10, 48, 48), seed=4)


def _objects_on(instances, planes):
    """'objects' labels: 1 = background, each nucleus id + 1, on the given planes only (0 elsewhere)."""
    lab = np.zeros(instances.shape, np.int32)
    for z in planes:
        lab[z] = np.where(instances[z] > 0, instances[z].astype(np.int32) + 1, 1)
    return lab


@pytest.mark.parametrize("head", ["boundary", "flows"])
def test_objects_on_three_planes_give_three_samples(stack, head):
    image, instances = stack
    labels = _objects_on(instances, PAINTED)
    samples, *_ = prepare_training_data([image], [labels], "objects", axes=["ZYX"], scale=1.0, head=head)
    assert len(samples) == len(PAINTED)
    for sample, z in zip(samples, PAINTED, strict=True):
        # each sample is its own painted plane: the foreground it learns is that plane's nuclei
        assert np.array_equal(sample.target > 0, instances[z] > 0)
        assert not (sample.target == IGNORE).any()  # a fully painted plane


def test_scribbles_on_three_planes_leave_the_rest_unannotated(stack):
    image, instances = stack
    labels = np.zeros(instances.shape, np.int32)
    for z in PAINTED:
        labels[z] = make_scribbles(instances[z], seed=z)
    samples, *_ = prepare_training_data([image], [labels], "scribbles", axes=["ZYX"], scale=1.0)
    assert len(samples) == len(PAINTED)
    for sample, z in zip(samples, PAINTED, strict=True):
        # pixels left at 0 on a painted plane are ignored by every loss
        assert np.array_equal(sample.target == IGNORE, labels[z] == 0)
