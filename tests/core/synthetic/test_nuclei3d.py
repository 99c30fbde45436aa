"""The synthetic 3D nuclei stacks: exact, connected, anisotropic, touching, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.synthetic import make_nuclei_3d


@pytest.fixture(scope="module")
def stack():
    return make_nuclei_3d((16, 64, 64), seed=2)


def test_deterministic_for_a_seed(stack):
    image, instances = make_nuclei_3d((16, 64, 64), seed=2)
    assert np.array_equal(image, stack[0]) and np.array_equal(instances, stack[1])
    assert not np.array_equal(make_nuclei_3d((16, 64, 64), seed=3)[0], image)


def test_types_ids_and_contrast(stack):
    image, instances = stack
    assert image.shape == instances.shape == (16, 64, 64)
    assert image.dtype == np.uint16 and instances.dtype == np.uint16
    ids = np.unique(instances)
    assert np.array_equal(ids, np.arange(ids.size)) and ids.size > 10
    assert image[instances > 0].mean() > 1.5 * image[instances == 0].mean()


def test_every_nucleus_is_one_3d_object_spanning_planes(stack):
    _, instances = stack
    spans = []
    for i, sl in enumerate(ndi.find_objects(instances), start=1):
        assert ndi.label(instances[sl] == i)[1] == 1
        spans.append((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
    spans = np.array(spans)
    # anisotropic: a nucleus spans several planes but fewer planes than rows
    assert np.median(spans[:, 0]) >= 3
    assert np.median(spans[:, 0]) < np.median(spans[:, 1])


def test_nuclei_touch(stack):
    _, instances = stack
    a, b = instances[:, :, :-1], instances[:, :, 1:]
    assert np.count_nonzero((a != b) & (a > 0) & (b > 0)) > 20


def test_voxel_iou_scores_a_stack(stack):
    _, truth = stack
    assert match_instances(truth, truth)["ap50"] == 1.0
    # a linked-planes failure: each nucleus cut into its planes is no match at IoU 0.5
    per_plane = truth.astype(np.int64) + 10_000 * np.arange(truth.shape[0])[:, None, None] * (truth > 0)
    score = match_instances(per_plane, truth)
    assert score["n_pred"] > 3 * score["n_true"] and score["ap50"] < 0.1


def test_bad_arguments():
    with pytest.raises(InputError):
        make_nuclei_3d((64, 64))
    with pytest.raises(InputError):
        make_nuclei_3d((16, 64, 64), anisotropy=0.5)
