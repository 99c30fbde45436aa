"""A package's preprocessing as SegLab's per-plane scaling, and its axes: the arithmetic, without a package."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from napari_seglab.core.data import normalize
from napari_seglab.core.errors import InputError
from napari_seglab.core.predict._package_ops import InputScaling, valid_size


@dataclass
class Kwargs:
    values: dict = field(default_factory=dict)

    def model_dump(self) -> dict:
        return dict(self.values)


@dataclass
class Step:
    id: str
    kwargs: Kwargs = field(default_factory=Kwargs)


def step(kind: str, **kw) -> Step:
    return Step(kind, Kwargs(kw))


@pytest.fixture
def plane():
    rng = np.random.default_rng(0)
    return np.stack([rng.gamma(2.0, 300.0, (40, 50)), rng.normal(5.0, 2.0, (40, 50))]).astype(np.float32)


def test_zero_mean_unit_variance_then_a_linear_step_compose(plane):
    scaling = InputScaling([step("zero_mean_unit_variance", axes=["y", "x"]),
                            step("scale_linear", gain=2.0, offset=1.0)], 2, "p")
    got = normalize(plane, *scaling(plane))
    flat = plane.reshape(2, -1).astype(np.float64)
    z = (plane - flat.mean(1)[:, None, None]) / (flat.std(1)[:, None, None] + 1e-6)
    np.testing.assert_allclose(got, 2 * z + 1, atol=1e-4)


def test_scale_range_is_per_channel_percentiles_and_joint_over_channels(plane):
    per = InputScaling([step("scale_range", axes=["y", "x"], min_percentile=1.0, max_percentile=99.8)], 2, "p")
    lo, hi = per(plane)
    np.testing.assert_allclose(lo, np.percentile(plane.reshape(2, -1), 1.0, axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(hi) - 1e-6, np.percentile(plane.reshape(2, -1), 99.8, axis=1), rtol=1e-5)
    joint = InputScaling([step("scale_range", axes=["channel", "y", "x"], max_percentile=99.0)], 2, "p")
    lo, hi = joint(plane)
    assert lo[0] == lo[1] and hi[0] == hi[1] == pytest.approx(np.percentile(plane, 99.0) + 1e-6, rel=1e-5)


def test_steps_seglab_cannot_apply_before_the_network_are_refused():
    with pytest.raises(InputError, match="'stardist_postprocessing' is not one SegLab applies"):
        InputScaling([step("stardist_postprocessing")], 1, "p")
    with pytest.raises(InputError, match="gain <= 0"):
        InputScaling([step("scale_linear", gain=-1.0)], 1, "p")


def test_valid_sizes_follow_min_and_step():
    from types import SimpleNamespace

    size = SimpleNamespace(min=40, step=8)
    assert [valid_size(size, n) for n in (10, 40, 41, 64, 65)] == [40, 40, 48, 64, 72]
    assert valid_size(96, 64) == 96
    with pytest.raises(InputError, match="fixed size 96"):
        valid_size(96, 128)
