"""The instance heads' raw outputs blended over tiles by the prediction path itself (``iter_plane``).

Decoding the blended plane once keeps an object cut by a tile border whole (one sink, one
watershed basin); decoding tile by tile would not. A plane smaller than a tile is one padded tile.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_seglab.core.device import precision_for
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import TileDone, collect
from napari_seglab.core.objects import _flows as flows
from napari_seglab.core.predict import iter_plane, predict_plane

CPU = torch.device("cpu")


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _perfect_outputs(instances, kind):
    """Raw network outputs that match the head's targets exactly (confident foreground logits)."""
    target, _ = flows.targets(instances, kind=kind)
    raw = target.copy()
    raw[0] = np.where(target[0] > 0, 8.0, -8.0)
    if kind == "flows":
        raw[1:] *= flows.FLOW_SCALE
    return raw.astype(np.float32)


class Oracle(torch.nn.Module):
    """A 'network' right everywhere: it reads its tile's position from the input's two coordinate channels.

    Pixels of a tile padded beyond the plane get zeros (prediction crops them away).
    """

    def __init__(self, whole: np.ndarray):
        super().__init__()
        self.whole = torch.from_numpy(whole)
        self.tiles: list[tuple[int, int, int, int]] = []

    def forward(self, x):
        y0, x0 = int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0])
        h, w = x.shape[-2:]
        self.tiles.append((y0, x0, h, w))
        out = torch.zeros((1, self.whole.shape[0], h, w))
        part = self.whole[:, y0:y0 + h, x0:x0 + w]
        out[0, :, : part.shape[1], : part.shape[2]] = part
        return out


def loaded(model: torch.nn.Module, out_channels: int) -> SimpleNamespace:
    """What iter_plane reads of a LoadedModel: the network, its device and precision, its output channels."""
    return SimpleNamespace(model=model, device=CPU, precision=precision_for(CPU, training=True),
                           spec=SimpleNamespace(out_channels=out_channels, n_classes=2))


@pytest.mark.parametrize("kind", ["flows", "distance"])
def test_an_object_on_a_tile_border_is_whole_after_blending_and_decoding(kind):
    truth = np.zeros((96, 160), np.int32)
    truth[_disc(truth.shape, 48, 64, 14)] = 1  # straddles the border between the first tiles
    truth[_disc(truth.shape, 20, 130, 9)] = 2
    whole = _perfect_outputs(truth, kind)
    oracle = Oracle(whole)
    yy, xx = np.mgrid[:96, :160].astype(np.float32)
    events, blended = collect(iter_plane(loaded(oracle, whole.shape[0]), np.stack([yy, xx]), tile=64,
                                         overlap=0.25, raw=True))
    assert len(oracle.tiles) == len(events) > 4 and all(isinstance(e, TileDone) for e in events)
    # the tiles overlap and the disc at x = 64 lies across a tile border
    assert any(x0 < 50 < x0 + w for _, x0, _, w in oracle.tiles) and any(x0 > 50 for _, x0, _, _ in oracle.tiles)
    assert blended.shape == whole.shape
    np.testing.assert_allclose(blended, whole, atol=1e-4)  # no seams: the blend gives back the whole plane
    decoded = flows.decode(blended, kind)
    assert int(decoded.max()) == 2
    assert match_instances(decoded, truth, (0.9,))["ap90"] == 1.0
    # decoding tile by tile and pasting would cut the border object in two (or lose it)
    pasted = np.zeros(truth.shape, np.int32)
    for x0 in (0, 64, 128):
        part = flows.decode(whole[:, :, x0:x0 + 64], kind, min_size=1)
        pasted[:, x0:x0 + 64] = np.where(part > 0, part + pasted.max(), 0)
    assert match_instances(pasted, truth, (0.9,))["tp_90"] < 2


class Doubler(torch.nn.Module):
    """Raw outputs (2, h, w): the input and twice the input."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.cat([x, 2 * x], 1)


def test_a_plane_smaller_than_the_tile_is_one_padded_tile_cropped_back():
    img = np.random.default_rng(1).random((1, 20, 30)).astype(np.float32)
    model = Doubler()
    out = predict_plane(loaded(model, 2), img, tile=64, raw=True)
    assert model.shapes == [(1, 1, 32, 32)]  # padded to the network's multiple of 32
    assert out.shape == (2, 20, 30)
    np.testing.assert_allclose(out[0], img[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], 2 * img[0], rtol=1e-6)
