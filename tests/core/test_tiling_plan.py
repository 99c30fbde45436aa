"""One tiling module: the TilePlan covers a plane with the fewest overlapping tiles, blends any
window, stitches border objects; overlap is validated in the core; an out-of-memory CPU fallback
lasts for one call only."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_seglab.core.device import precision_for
from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import Message, Stopped, TileDone, collect, drive
from napari_seglab.core.objects import _flows as flows
from napari_seglab.core.predict import _forward as forward_module
from napari_seglab.core.predict import iter_plane, iter_predict_image, load_model, predict_plane
from napari_seglab.core.tiling import ALIGN, Blender, TilePlan, check_overlap, window

# ----------------------------------------------------------------------------- where the tiles go

LENGTHS, TILES, OVERLAPS = (1, 31, 100, 257, 1000, 2049), (32, 96, 256), (0.0, 0.25, 0.5, 0.9)


def _starts_and_size(plan):
    return list(plan.ys), plan.size[0]


@pytest.mark.parametrize("make", [TilePlan.balanced, TilePlan.fixed])
def test_tiles_cover_the_plane_with_the_overlap_asked_and_no_more_tiles_than_needed(make):
    for length in LENGTHS:
        for tile in TILES:
            for overlap in OVERLAPS:
                plan = make((length, 7), tile, overlap)
                ys, size = _starts_and_size(plan)
                case = (make.__name__, length, tile, overlap, ys, size)
                assert plan.xs == (0,) and plan.size[1] == 7, case  # the short axis is one tile
                assert ys[0] == 0 and ys[-1] + size == length and ys == sorted(set(ys)), case
                assert size <= min(tile, length), case
                if length <= tile:
                    assert (ys, size) == ([0], length), case
                    continue
                asked = round(tile * overlap)
                shared = [size - (b - a) for a, b in itertools.pairwise(ys)]
                assert min(shared) >= asked - 1, case  # starts are rounded to whole pixels
                # one tile fewer, at the full tile size and overlap asked, would not reach the end
                n = len(ys)
                assert n == 1 or (n - 1) * tile - (n - 2) * asked < length, case


def test_a_balanced_plan_shrinks_its_tiles_to_a_multiple_of_32_and_a_fixed_one_never_does():
    for length in LENGTHS:
        for tile in TILES:
            for overlap in OVERLAPS:
                balanced = TilePlan.balanced((length, 7), tile, overlap)
                fixed = TilePlan.fixed((length, 7), tile, overlap)
                assert fixed.size[0] == min(tile, length)
                assert len(balanced.ys) == len(fixed.ys)  # the same count; only the size differs
                size = balanced.size[0]
                assert size % ALIGN == 0 or size in (tile, length), (length, tile, overlap, size)
    # worked by hand: 257 px in tiles of 256 sharing 26 px needs two tiles; 160 px ones suffice
    assert _starts_and_size(TilePlan.balanced((257, 7), 256, 0.1)) == ([0, 97], 160)
    assert _starts_and_size(TilePlan.fixed((257, 7), 256, 0.1)) == ([0, 1], 256)
    assert TilePlan.balanced((100, 100), 64, 0.25).origins() == [(0, 0), (0, 36), (36, 0), (36, 36)]


def test_a_blended_plane_is_the_window_weighted_mean_of_its_tiles(tiny_model, blobs):
    """Every pixel of a tiled U-Net prediction is the Hann-weighted mean of the tiles that cover it."""
    lm = load_model(tiny_model, "cpu")
    img = np.tile(blobs[0], (2, 2))[:110, :150]
    chw = ((img - img.min()) / (img.max() - img.min()))[None].astype(np.float32)
    plan = TilePlan.balanced(img.shape, 64, 0.25)
    weights = window(*plan.size)
    total, weight = np.zeros((1, *img.shape), np.float64), np.zeros(img.shape, np.float64)
    for where in plan.slices():
        total[(slice(None), *where)] += forward_module._tile_output(lm, chw[(slice(None), *where)], False) * weights
        weight[where] += weights
    blended = predict_plane(lm, chw, tile=64, overlap=0.25)
    assert len(plan) > 4
    np.testing.assert_allclose(blended, total / weight, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- blending and stitching


def test_the_blender_takes_a_window_that_is_not_separable():
    plan = TilePlan.fixed((70, 90), 32, 0.25)
    yy, xx = np.mgrid[:32, :32]
    radial = (1.0 / (1.0 + np.hypot(yy - 15.5, xx - 15.5))).astype(np.float32)  # no outer product gives this
    whole = np.random.default_rng(3).random((2, 70, 90)).astype(np.float32)
    blender = Blender(plan, 2, radial)
    for where in plan.slices():
        blender.add(where, whole[(slice(None), *where)].copy())
    np.testing.assert_allclose(blender.result(), whole, rtol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        Blender(plan, 1, np.ones((8, 8)))


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class _FlowOracle(torch.nn.Module):
    """A 'network' that is right everywhere: it reads its tile's position from the input's coordinate channels."""

    def __init__(self, whole):
        super().__init__()
        self.whole = torch.from_numpy(whole)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y0, x0 = int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0])
        h, w = x.shape[-2:]
        out = torch.zeros((1, 3, h, w))
        part = self.whole[:, y0:y0 + h, x0:x0 + w]
        out[0, :, : part.shape[1], : part.shape[2]] = part
        return out


def test_an_object_on_a_tile_border_is_stitched_into_one_instance():
    truth = np.zeros((96, 160), np.int32)
    truth[_disc(truth.shape, 48, 64, 14)] = 1  # straddles tile borders
    truth[_disc(truth.shape, 20, 130, 9)] = 2
    fg = np.where(truth > 0, 10.0, -10.0).astype(np.float32)
    whole = np.concatenate([fg[None], flows.FLOW_SCALE * flows.flow_field(truth)]).astype(np.float32)
    oracle = _FlowOracle(whole)
    cpu = torch.device("cpu")
    lm = SimpleNamespace(model=oracle, device=cpu, precision=precision_for(cpu, training=True),
                         spec=SimpleNamespace(out_channels=3, n_classes=2))
    yy, xx = np.mgrid[:96, :160].astype(np.float32)
    events, blended = collect(iter_plane(lm, np.stack([yy, xx]), tile=64, overlap=0.25, raw=True))
    assert oracle.calls == len(events) > 4 and all(isinstance(e, TileDone) for e in events)
    np.testing.assert_allclose(blended, whole, atol=1e-4)
    decoded = flows.decode(blended, "flows")
    assert int(decoded.max()) == 2
    assert match_instances(decoded, truth, (0.9,))["ap90"] == 1.0


# ----------------------------------------------------------------------------- overlap, stop


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf"), "0.25", True, None])
def test_overlap_outside_0_1_is_refused_by_the_core(tiny_model, blobs, bad):
    with pytest.raises(InputError, match="overlap"):
        check_overlap(bad)
    lm = load_model(tiny_model, "cpu")
    with pytest.raises(InputError, match="overlap"):
        drive(iter_predict_image(lm, blobs[0], tile=64, overlap=bad))
    with pytest.raises(InputError, match="overlap"):
        TilePlan.balanced((100, 100), 32, bad)


def test_a_stopped_plane_raises_stopped_instead_of_returning_none(tiny_model, blobs):
    import threading

    lm = load_model(tiny_model, "cpu")
    stop = threading.Event()
    gen = iter_plane(lm, blobs[0][None].astype(np.float32), tile=64, overlap=0.25, stop=stop)
    assert isinstance(next(gen), TileDone)
    stop.set()
    with pytest.raises(Stopped):
        drive(gen)


# ----------------------------------------------------------------------------- out-of-memory fallback


@pytest.mark.slow
def test_cpu_fallback_after_out_of_memory_lasts_for_that_call_only(tiny_model, blobs, monkeypatch):
    """A cached model that ran out of GPU memory once is still the GPU model for the next call."""
    img = blobs[0]
    expected = drive(iter_predict_image(load_model(tiny_model, "cpu"), np.stack([img, img]), "ZYX", tile=128)).labels
    cached = load_model(tiny_model, "cpu")
    cached.device = torch.device("cuda")  # as the Predict dock or a batch worker holds a GPU model
    network, precision = cached.model, cached.precision
    seen: list[str] = []
    real = forward_module._forward

    def short_of_gpu_memory(lm, chw, *, compact, raw=False):
        seen.append(lm.device.type)
        if lm.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(lm, chw, compact=compact, raw=raw)

    monkeypatch.setattr(forward_module, "_forward", short_of_gpu_memory)
    for _ in range(2):
        seen.clear()
        events, pred = collect(iter_predict_image(cached, np.stack([img, img]), "ZYX", tile=128))
        warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
        assert any("continuing on the CPU" in w for w in warnings)
        assert seen == ["cuda", "cpu", "cpu"]  # the second plane stays on the CPU copy within the call
        np.testing.assert_array_equal(pred.labels, expected)
        # the cached model is untouched: next call starts on its device again
        assert cached.device.type == "cuda" and cached.model is network and cached.precision is precision
