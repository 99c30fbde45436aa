"""The network on one plane: forward passes on tiles, blended over a :class:`~napari_seglab.core.tiling.TilePlan`.

:func:`iter_plane` is the plane-level generator below
:func:`~napari_seglab.core.predict.iter_predict_image`: it yields
:class:`~napari_seglab.core.events.TileDone` per tile, returns the blended output and raises
:class:`~napari_seglab.core.events.Stopped` when its ``stop`` event is set.
:func:`iter_with_fallback` is the out-of-memory policy of every tiled prediction (these
planes, and the object and box families' own tiled detection): smaller tiles, then the CPU,
for that call only (the caller's model is never changed).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..device import is_oom, precision_for
from ..errors import InputError
from ..events import Message, TileDone, check_stop, drive
from ..tiling import ALIGN, Blender, TilePlan

#: the smallest tile the out-of-memory retries go down to
MIN_TILE = 128


def _pad_to_multiple(chw: np.ndarray, multiple: int = ALIGN) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = chw.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return chw, (h, w)
    mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
    return np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode=mode), (h, w)


def _forward(lm, chw: np.ndarray, *, compact: bool, raw: bool = False) -> np.ndarray:
    """Model output for one normalised (C, Y, X) tile, float32.

    ``compact``: binary models give (1, Y, X) foreground probability, others
    (K, Y, X) softmax; otherwise always (max(K, 2), Y, X) class probabilities.
    ``raw``: the network's outputs (K, Y, X) as they are, no activation (the
    "flows" / "distance" instance heads, decoded by :mod:`napari_seglab.core.objects._flows`).
    """
    from ..models import probabilities

    padded, (h, w) = _pad_to_multiple(chw)
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None].to(lm.device)
    if lm.precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), lm.precision.autocast():
        logits = lm.model(x)
    logits = logits.float()[:, :, :h, :w]
    if raw:
        return logits[0].cpu().numpy()
    out = torch.sigmoid(logits) if compact and logits.shape[1] == 1 else probabilities(logits)
    return out[0].cpu().numpy()


def forward_probabilities(lm, chw: np.ndarray) -> np.ndarray:
    """Class probabilities (K, Y, X) float32 of one normalised (C, Y, X) tile (K >= 2)."""
    return _forward(lm, chw, compact=False)


def forward_raw(lm, chw: np.ndarray) -> np.ndarray:
    """Raw network outputs (K, Y, X) float32 of one normalised (C, Y, X) tile (no activation)."""
    return _forward(lm, chw, compact=False, raw=True)


def _once(lm, chw: np.ndarray, raw: bool) -> np.ndarray:
    return _forward(lm, chw, compact=True, raw=True) if raw else _forward(lm, chw, compact=True)


#: test-time augmentation: the tile, flipped vertically, horizontally and both ways
TTA_FLIPS = ((False, False), (True, False), (False, True), (True, True))


def _tile_output(lm, chw: np.ndarray, raw: bool) -> np.ndarray:
    """Compact probabilities, or raw outputs, of one tile (:func:`_forward`, looked up at call time).

    With ``lm.tta`` the tile also goes through the network flipped (:data:`TTA_FLIPS`); each
    output is flipped back (flow vectors turned with it) and the outputs are averaged.
    """
    if not getattr(lm, "tta", False):
        return _once(lm, chw, raw)
    from ..objects import transform

    vectors = "flows" if raw and lm.spec.head == "flows" else None
    total = None
    for flip_y, flip_x in TTA_FLIPS:
        out = _once(lm, np.ascontiguousarray(transform(chw, flip_y=flip_y, flip_x=flip_x)), raw)
        out = transform(out, flip_y=flip_y, flip_x=flip_x, kind=vectors)
        total = out if total is None else total + out
    return total / len(TTA_FLIPS)


def expand_probabilities(out: np.ndarray) -> np.ndarray:
    """Compact output (1, Y, X) foreground probability -> (2, Y, X); (K, Y, X) unchanged."""
    return np.concatenate([1 - out, out]) if out.shape[0] == 1 else out


def _out_channels(lm, raw: bool) -> int:
    spec = lm.spec
    return spec.out_channels if raw else 1 if spec.out_channels == 1 else max(2, spec.n_classes)


def iter_plane(lm, chw: np.ndarray, *, tile: int, overlap: float, lohi: tuple | None = None,
               stop: threading.Event | None = None, raw: bool = False) -> Generator[TileDone, None, np.ndarray]:
    """Predict one (C, Y, X) plane tile by tile; yields TileDone per tile, returns the blended output.

    ``chw`` is raw when ``lohi`` (per-channel percentiles) is given (each tile
    is then normalised on the fly, so no normalised copy of the whole plane is
    made), else already normalised. The output is compact (see
    :func:`_forward`): (1, Y, X) foreground probability for binary models,
    (K, Y, X) otherwise; ``raw``: the network's raw outputs (K, Y, X) (instance
    heads: the blended plane is decoded once, so objects on tile borders stay
    whole). Tiles follow :meth:`TilePlan.balanced` and blend with its window;
    a plane that fits is one tile. Raises Stopped when ``stop`` is set
    between two tiles.
    """
    from ..data import normalize

    def prepared(a):
        return normalize(a, *lohi) if lohi is not None else a

    plan = TilePlan.balanced(chw.shape[-2:], tile, overlap)
    if len(plan) == 1:
        out = _tile_output(lm, prepared(chw), raw)
        yield TileDone(1, 1)
        return out
    blender = Blender(plan, _out_channels(lm, raw))
    for i, where in enumerate(plan.slices()):
        check_stop(stop)
        blender.add(where, _tile_output(lm, prepared(chw[(slice(None), *where)]), raw))
        yield TileDone(i + 1, len(plan))
    return blender.result()


def on_cpu(lm):
    """A copy of a loaded model on the CPU, for one call; ``lm`` itself (a cached model) is left as it was.

    The copy's weights are made on the CPU straight from the device's, so it
    needs no second allocation on a device that just ran out of memory.
    """
    cpu = torch.device("cpu")
    memo: dict = {}
    for p in lm.model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to(cpu, copy=True), requires_grad=p.requires_grad)
    for b in lm.model.buffers():
        memo[id(b)] = b.detach().to(cpu, copy=True)
    model = copy.deepcopy(lm.model, memo)
    return lm.replace(model=model, device=cpu, precision=precision_for(cpu))


def iter_with_fallback(run: Callable[[object, int], Generator], lm, tile: int
                       ) -> Generator[TileDone | Message, None, tuple[object, object]]:
    """The out-of-memory policy of every tiled prediction; returns (``run``'s result, the model it ran on).

    ``run(lm, tile)`` makes the generator that predicts one plane with that
    model and tile side (dense, object or box family alike). On an
    out-of-memory error the plane starts again with the tile halved (down to
    :data:`MIN_TILE`), then on a CPU copy of the model (:func:`on_cpu`); each
    step is reported as a warning Message. The caller passes the returned
    model to the next plane of the same call, so the fallback lasts for that
    call only.
    """
    while True:
        try:
            out = yield from run(lm, tile)
            return out, lm
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            if tile > MIN_TILE:
                tile = max(MIN_TILE, tile // 2 // ALIGN * ALIGN)
                yield Message(f"out of memory: retrying with {tile}px tiles", "warning")
                continue
            if lm.device.type != "cpu":
                lm = on_cpu(lm)
                yield Message("out of GPU memory even with small tiles: continuing on the CPU", "warning")
                continue
            raise InputError(f"out of memory even with {MIN_TILE}px tiles; close other programs or use a "
                             "machine with more memory") from exc


def iter_plane_with_fallback(lm, chw: np.ndarray, *, tile: int, overlap: float, lohi: tuple | None = None,
                             stop: threading.Event | None = None, raw: bool = False
                             ) -> Generator[TileDone | Message, None, tuple[np.ndarray, object]]:
    """:func:`iter_plane` under the out-of-memory policy (:func:`iter_with_fallback`); returns (output, model)."""
    def run(model, side):
        return iter_plane(model, chw, tile=side, overlap=overlap, lohi=lohi, stop=stop, raw=raw)

    return (yield from iter_with_fallback(run, lm, tile))


def predict_plane(lm, chw: np.ndarray, *, tile: int, overlap: float = 0.25, lohi: tuple | None = None,
                  raw: bool = False) -> np.ndarray:
    """Blocking twin of :func:`iter_plane`: the blended output of one plane."""
    return drive(iter_plane(lm, chw, tile=tile, overlap=overlap, lohi=lohi, raw=raw))
