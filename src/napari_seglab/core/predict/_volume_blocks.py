"""The orthogonal 3D method in bounded memory: the volume cut into overlapping 3D blocks (tiles in z too).

Memory of the whole-volume method (``benchmarks/volume_memory.py``, per voxel of the isotropic
volume the network sees): the normalised stack 4 bytes per channel, the combined field 16 (flows)
or 8 (distance), and the 3D decoding about 100 more (end points, their paths, the histogram, the
watershed). A 64x1024x1024 stack at anisotropy 3 is 201 M such voxels: far beyond 3 GB.

Here the decoding grid (the isotropic volume, or for the flows of an upsampling model the
image's own pixel size, z by the anisotropy) is cut into blocks of :data:`DEFAULT_BLOCK` voxels a
side, each grown by a halo. For each block, only the voxels it needs are resampled from the raw
stack, the 2D network runs on the block's YX, ZX and ZY planes (tiled and blended as usual), the
three views are combined and decoded in 3D, and the block keeps the objects whose canonical point
(their first voxel in raster order on the decoding grid) lies in its core; an object cut by the
halo's edge (wider than the halo) is kept as pieces, each block writing its part inside its core,
joined to what earlier blocks wrote where they overlap in the halo. Memory then follows
the block, not the stack: the raw stack and the labels (4 bytes per voxel of the stack) are
the only whole arrays.

One block over the whole volume is the whole-volume method itself: both run through
:func:`iter_orthogonal`, with the same resampling (:func:`resampled_region`, exact on any region)
and the same numbering (objects in the raster order of their canonical point). Where the network
sees the same pixels and every object fits in the halo, blocked labels equal whole ones; a convolution
near a block's face sees less context than in the whole volume, as at a 2D tile's edge.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import numpy as np

from ..data import normalize
from ..events import Message, Stopped, TileDone, check_stop, relay
from ._forward import iter_plane_with_fallback
from ._options import DEFAULT_VOLUME_BLOCK

#: core side (decoding-grid voxels) of a 3D block. benchmarks/volume_memory.py, flows head, 20-voxel halo:
#: 64x1024x1024 at anisotropy 3 (36 blocks) peaked at 1.60 GB; blocks of 128 saved 0.07 GB at 32x512x512
#: and see more halo
DEFAULT_BLOCK = DEFAULT_VOLUME_BLOCK
#: volumes of at most this many decoding-grid voxels are decoded whole: 64x512x512 (16 M) peaked at 1.90 GB
#: whole and 1.18 GB in blocks, which took 1.4x as long (random U-Net, volume_memory.py)
WHOLE_VOXELS = 16 * 2**20
#: halo around a block's core: the typical object's diameter plus this margin (voxels), at least MIN_HALO
HALO_MARGIN = 8
MIN_HALO = 16
#: the typical object's diameter (network pixels) when the checkpoint records none
DEFAULT_DIAMETER = 30.0

#: which flow component (dz, dy, dx = 1, 2, 3) each plane's (d_first, d_second) feeds, by the axis sliced
FLOW_AXES = {0: (2, 3), 1: (1, 3), 2: (1, 2)}
#: channels of the combined field, by head
FIELD_CHANNELS = {"flows": 4, "distance": 2, "boundary": 3}


def _axis_map(n_out: int, n_in: int, lo: int, hi: int):
    """Trilinear weights (as ``F.interpolate(align_corners=False)``) of output voxels lo..hi along one axis.

    Returns None where the axis is not resampled, else (i0, i1, w0, w1): the two input voxels and their
    float32 weights per output voxel, computed from the output's global index so any region gets the
    whole volume's values.
    """
    if n_out == n_in:
        return None
    src = np.maximum((np.arange(lo, hi, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (1 - w1).astype(np.float32), w1


def _source_span(n_out: int, n_in: int, lo: int, hi: int) -> tuple[int, int]:
    """The input voxels [a, b) that output voxels lo..hi interpolate from."""
    m = _axis_map(n_out, n_in, lo, hi)
    return (lo, hi) if m is None else (int(m[0][0]), int(m[1][-1]) + 1)


def _interpolate(a: np.ndarray, maps, offsets: Sequence[int]) -> np.ndarray:
    """(C, z, y, x) float32 ``a`` (an input box starting at ``offsets``) resampled axis by axis (x, y, then z)."""
    for axis in (2, 1, 0):
        m = maps[axis]
        if m is None:
            continue
        i0, i1, w0, w1 = m
        shape = [1, 1, 1, 1]
        shape[axis + 1] = -1
        lo = np.take(a, i0 - offsets[axis], axis=axis + 1)
        lo *= w0.reshape(shape)
        hi = np.take(a, i1 - offsets[axis], axis=axis + 1)
        hi *= w1.reshape(shape)
        lo += hi
        a = lo
    return np.asarray(a, np.float32)


def resampled_region(source: np.ndarray, shape: Sequence[int], region: Sequence[tuple[int, int]],
                     lohi: tuple | None = None, full: Sequence[int] | None = None,
                     origin: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """The voxels ``region`` ((lo, hi) per z, y, x) of a (C, Z, Y, X) volume resampled trilinearly to ``shape``.

    ``source`` holds the volume (``full``, its shape, defaults to the source's) or a box of it starting at
    ``origin``. Only the input box the region needs is read (and normalised with ``lohi`` when given);
    every output voxel's value depends on its global index alone, so a block equals the same voxels of
    the whole volume bit for bit. Returns (C, *region sizes) float32.
    """
    full = tuple(source.shape[1:]) if full is None else tuple(full)
    maps = [_axis_map(int(n), int(m), lo, hi) for n, m, (lo, hi) in zip(shape, full, region, strict=True)]
    box = [_source_span(int(n), int(m), lo, hi) for n, m, (lo, hi) in zip(shape, full, region, strict=True)]
    raw = source[(slice(None), *(slice(a - o, b - o) for (a, b), o in zip(box, origin, strict=True)))]
    a = normalize(raw, *lohi) if lohi is not None else np.array(raw, np.float32)
    return _interpolate(a, maps, [a0 for a0, _ in box])


def spans(length: int, block: int, halo: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((core lo, hi), (extended lo, hi)) along one axis: even cores of at most ``block``, grown by ``halo``."""
    n = max(1, math.ceil(length / max(1, block)))
    bounds = [round(i * length / n) for i in range(n + 1)]
    return [((bounds[i], bounds[i + 1]), (max(0, bounds[i] - halo), min(length, bounds[i + 1] + halo)))
            for i in range(n)]


def default_halo(object_area: float | None, shrink: float = 1.0) -> int:
    """Halo (decoding-grid voxels): the typical object's diameter plus :data:`HALO_MARGIN`."""
    diameter = 2 * math.sqrt(object_area / math.pi) if object_area else DEFAULT_DIAMETER
    return max(MIN_HALO, math.ceil(diameter / shrink) + HALO_MARGIN)


def _tag(event, plane: int, planes: int):
    return replace(event, plane=plane, planes=planes) if isinstance(event, TileDone) else event


def iter_views(model, norm: np.ndarray, head: str, *, tile: int, overlap: float, stop: threading.Event | None,
               done: int, total: int):
    """The 2D network on every YX, ZX and ZY plane of ``norm`` (C, Z, Y, X), combined: returns (field, model).

    The field (K, Z, Y, X) float32: the foreground logit averaged over the three views, each flow
    component over the two views that contain its axis; distances and class probabilities averaged.
    """
    raw = head != "boundary"
    field = np.zeros((FIELD_CHANNELS[head], *norm.shape[1:]), np.float32)
    current = model
    for axis in range(3):
        for i in range(norm.shape[axis + 1]):
            check_stop(stop)
            plane = np.take(norm, i, axis=axis + 1)
            out, current = yield from relay(
                iter_plane_with_fallback(current, plane, tile=tile, overlap=overlap, stop=stop, raw=raw),
                partial(_tag, plane=done, planes=total))
            where = [slice(None)] * 3
            where[axis] = i
            where = tuple(where)
            if head == "flows":
                field[(0, *where)] += out[0] / 3
                first, second = FLOW_AXES[axis]
                field[(first, *where)] += out[1] / 2
                field[(second, *where)] += out[2] / 2
            else:
                field[(slice(None), *where)] += out / 3
            done += 1
    return field, current


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """Nearest input voxel (voxel centres aligned) of each of ``n_out`` output voxels."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _first_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, flat index of each id's first voxel in raster order) of a labelled block."""
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids, first = np.unique(flat[where], return_index=True)
    return ids, where[first]


def iter_orthogonal(model, vol: np.ndarray, head: str, *, lohi: tuple, iso: Sequence[int], grid: Sequence[int],
                    tile: int, overlap: float, block: int, halo: int, min_size: int, decoding: dict,
                    stop: threading.Event | None = None, out: np.ndarray | None = None):
    """(labels (Z, Y, X) int32 of the raw stack ``vol`` (C, Z, Y, X), model): the orthogonal method block by block.

    ``iso``: the volume the network sees; ``grid``: where the objects are decoded (``iso``, or coarser);
    ``block`` / ``halo``: core side and halo in decoding-grid voxels (``block`` 0: one block, the whole
    volume). Objects are numbered 1..N in the raster order of their first voxel on the grid. ``out``: a
    zeroed (Z, Y, X) int32 array the labels are written into (one fewer stack-sized array).
    """
    from ..objects import decode_volume

    iso, grid = tuple(int(n) for n in iso), tuple(int(n) for n in grid)
    per_axis = [spans(n, block, halo) if block else [((0, n), (0, n))] for n in grid]
    blocks = [(a, b, c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]]
    regions = []
    total = 0
    for blk in blocks:
        ext = [e for _, e in blk]
        need = [_source_span(g, n, lo, hi) for g, n, (lo, hi) in zip(grid, iso, ext, strict=True)]
        regions.append(need)
        total += sum(hi - lo for lo, hi in need)
    if len(blocks) > 1:
        yield Message(f"3D blocks: {len(blocks)} of up to {block} voxels a side with a {halo}-voxel halo "
                      f"(a {'x'.join(map(str, grid))} decoding grid)")
    raw_shape = vol.shape[1:]
    back = [_nearest(n, g) for n, g in zip(raw_shape, grid, strict=True)]  # stack voxel -> grid voxel
    labels = np.zeros(raw_shape, np.int32) if out is None else out
    keys: list[int] = []  # canonical point (flat index on the grid) of each provisional id, in id order
    kinds: list[bool] = []  # whether each provisional id is a piece of a cut object
    joins: dict[int, int] = {}  # provisional id -> the id it continues (pieces of one object across block faces)
    n_cut = 0
    done = 0
    current = model
    try:
        for blk, need in zip(blocks, regions, strict=True):
            norm = resampled_region(vol, iso, need, lohi)
            field, current = yield from iter_views(current, norm, head, tile=tile, overlap=overlap, stop=stop,
                                                   done=done, total=total)
            done += sum(hi - lo for lo, hi in need)
            del norm
            ext = [e for _, e in blk]
            if grid != iso:
                field = resampled_region(field, grid, ext, full=iso, origin=[lo for lo, _ in need])
            found = decode_volume(field, head, min_size=min_size, **decoding)
            del field
            ids, first = _first_voxels(found)
            if not ids.size:
                continue
            local = np.unravel_index(first, found.shape)
            glob = [loc + e[0] for loc, e in zip(local, ext, strict=True)]
            own = np.ones(ids.size, bool)
            for g, (core, _) in zip(glob, blk, strict=True):
                own &= (g >= core[0]) & (g < core[1])
            # an object cut by the halo's edge is not seen whole here, so its first voxel says nothing: the block
            # writes the part of it inside its core, as a piece of its own, which a whole object may overwrite
            cut_ids = _cut(found, ext, grid)
            is_cut = np.isin(ids, cut_ids)
            own &= ~is_cut
            pieces = _core_pieces(found, cut_ids, blk)
            n_cut += int(is_cut.sum())
            lut = np.zeros(int(found.max()) + 1, np.int32)
            lut[ids[own]] = np.arange(len(keys) + 1, len(keys) + 1 + int(own.sum()), dtype=np.int32)
            keys.extend(np.ravel_multi_index(tuple(g[own] for g in glob), grid).tolist())
            kinds.extend([False] * int(own.sum()))
            if pieces.any():
                p_ids, p_first = _first_voxels(pieces)
                pieces_lut = np.zeros(int(pieces.max()) + 1, np.int32)
                pieces_lut[p_ids] = np.arange(len(keys) + 1, len(keys) + 1 + p_ids.size, dtype=np.int32)
                p_glob = [loc + e[0] for loc, e in zip(np.unravel_index(p_first, found.shape), ext, strict=True)]
                keys.extend(np.ravel_multi_index(tuple(p_glob), grid).tolist())
                kinds.extend([True] * p_ids.size)
            # the stack voxels whose nearest grid voxel lies in this block's extended region
            sel = [np.flatnonzero((b >= e[0]) & (b < e[1])) for b, e in zip(back, ext, strict=True)]
            if not all(s.size for s in sel):
                continue
            at = np.ix_(*(b[s] - e[0] for b, s, e in zip(back, sel, ext, strict=True)))
            box = tuple(slice(int(s[0]), int(s[-1]) + 1) for s in sel)
            view = labels[box]
            piece = np.zeros(len(kinds) + 1, bool)
            piece[1:] = kinds
            local_ids = found[at]
            if n_cut:  # pieces are joined to what the blocks before wrote where they overlap in this halo
                every = lut.copy()
                if pieces.any():
                    every[p_ids] = pieces_lut[p_ids]
                inside = [(b[s] >= c[0]) & (b[s] < c[1]) for b, s, (c, _) in zip(back, sel, blk, strict=True)]
                halo_part = ~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
                _join(joins, every[local_ids], view, halo_part, piece)
            mine = lut[local_ids]
            # a whole object takes voxels that are free or hold a piece; a piece takes free voxels only
            free = (mine > 0) & ((view == 0) | piece[view])
            view[free] = mine[free]
            if pieces.any():
                mine = pieces_lut[pieces[at]]
                free = (mine > 0) & (view == 0)
                view[free] = mine[free]
    except Stopped:
        labels[...] = 0  # a stack not finished stays 0, as the caller's result promises
        raise
    if n_cut:
        yield Message(f"{n_cut} object(s) reached a 3D block's halo and may be cut into pieces; a larger halo "
                      "keeps them whole", "warning")
    return _number_by_key(labels, keys, joins), current


def _cut(found: np.ndarray, ext, grid) -> np.ndarray:
    """Ids of the objects of a block touching a face of its extended region that is not the volume's."""
    touching = [np.zeros(0, found.dtype)]
    for axis, (lo, hi) in enumerate(ext):
        faces = ([0] if lo > 0 else []) + ([found.shape[axis] - 1] if hi < grid[axis] else [])
        touching += [np.unique(np.take(found, f, axis=axis)) for f in faces]
    ids = np.unique(np.concatenate(touching))
    return ids[ids > 0]


def _core_pieces(found: np.ndarray, cut_ids: np.ndarray, blk) -> np.ndarray:
    """The cut objects' voxels inside the block's core (elsewhere 0), ids as in ``found``."""
    if not cut_ids.size:
        return np.zeros((1, 1, 1), found.dtype)[:0]
    core = tuple(slice(c[0] - e[0], c[1] - e[0]) for c, e in blk)
    out = np.zeros_like(found)
    part = found[core]
    out[core] = np.where(np.isin(part, cut_ids), part, 0)
    return out


def _join(joins: dict[int, int], ours: np.ndarray, before: np.ndarray, halo_part: np.ndarray,
          piece: np.ndarray) -> None:
    """Join this block's objects to the earlier ones they continue across its halo, where one of two is a piece.

    ``ours``: this block's provisional ids over its region (stack voxels), ``before``: what earlier blocks
    wrote there, ``halo_part``: the region outside this block's core. Two ids are one object when their
    overlap in the halo covers at least half of the smaller of their two parts there (as planes are linked).
    """
    mask = halo_part & (ours > 0)
    if not mask.any():
        return
    mine, theirs = ours[mask], before[mask]
    size_mine = np.bincount(mine)
    size_theirs = np.bincount(before[halo_part])
    both = theirs > 0
    pairs, counts = np.unique(np.stack([mine[both], theirs[both]]), axis=1, return_counts=True)
    for (a, b), n in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        if (piece[a] or piece[b]) and 2 * n >= min(size_mine[a], size_theirs[b]):
            ra, rb = _root(joins, a), _root(joins, b)
            if ra != rb:
                joins[max(ra, rb)] = min(ra, rb)


def _root(joins: dict[int, int], i: int) -> int:
    while i in joins:
        i = joins[i]
    return i


def _number_by_key(labels: np.ndarray, keys: list[int], joins: dict[int, int] | None = None) -> np.ndarray:
    """Renumber provisional ids 1..N in the order of ``keys`` (an object's pieces joined: their smallest key),
    dropping ids no stack voxel kept (in place, plane by plane)."""
    if not keys:
        return labels
    n = len(keys)
    root = np.arange(n + 1)
    for i in joins or {}:
        root[i] = _root(joins, i)
    key = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(key, root[1:], np.asarray(keys, np.int64))
    present = np.zeros(n + 1, bool)
    for z in range(labels.shape[0]):
        present[root[np.unique(labels[z])]] = True
    present[0] = False
    ids = np.flatnonzero(present)  # roots with voxels
    order = ids[np.argsort(key[ids], kind="stable")]
    number = np.zeros(n + 1, np.int32)
    number[order] = np.arange(1, order.size + 1, dtype=np.int32)
    lut = number[root]
    for z in range(labels.shape[0]):
        labels[z] = lut[labels[z]]
    return labels
