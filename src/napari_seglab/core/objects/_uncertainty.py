"""Where the model is unsure: maps that tell the user where to paint next."""

from __future__ import annotations

import numpy as np


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy of class probabilities: (K, ...) float -> (...) float32 in [0, 1].

    0 where the model is certain, 1 where every class is equally likely.
    A compact binary output (1, ...) is read as the foreground probability.
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.shape[0] == 1:
        p = np.concatenate([1 - p, p])
    k = p.shape[0]
    ent = np.zeros(p.shape[1:], np.float32)
    for c in range(k):
        pc = np.clip(p[c], 1e-7, 1.0)
        ent -= pc * np.log(pc)
    return ent / np.float32(np.log(k))


def margin_map(probs: np.ndarray) -> np.ndarray:
    """1 - (top1 - top2) of the class probabilities: (K, ...) -> (...) float32 in [0, 1]."""
    p = np.asarray(probs, dtype=np.float32)
    if p.shape[0] == 1:
        p = np.concatenate([1 - p, p])
    part = np.partition(p, p.shape[0] - 2, axis=0)
    return (1 - (part[-1] - part[-2])).astype(np.float32)


def suggest_regions(uncertainty: np.ndarray, n: int = 5, box: int = 32) -> list[tuple[int, int, int, int]]:
    """The ``n`` most uncertain, non-overlapping ``box``-sized squares of a (Y, X) map.

    Returns (y0, x0, y1, x1) rows, most uncertain first: places to paint next.
    """
    from scipy import ndimage as ndi

    u = np.asarray(uncertainty, dtype=np.float32)
    score = ndi.uniform_filter(u, size=box, mode="constant")
    out = []
    h, w = u.shape
    for _ in range(n):
        idx = int(np.argmax(score))
        if score.flat[idx] <= 0:
            break
        cy, cx = divmod(idx, w)
        y0, x0 = max(0, cy - box // 2), max(0, cx - box // 2)
        y1, x1 = min(h, y0 + box), min(w, x0 + box)
        out.append((y0, x0, y1, x1))
        score[max(0, y0 - box):y1 + box, max(0, x0 - box):x1 + box] = 0
    return out


def default_box(shape: tuple[int, ...]) -> int:
    """A suggestion box side for a (..., Y, X) image: an eighth of its short side, 16 to 128 pixels."""
    return int(np.clip(min(shape[-2:]) // 8, 16, 128))


def paint_next(probs: np.ndarray, plane: tuple[int, ...] = (), n: int = 5,
               box: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Uncertainty of a prediction and where to paint next.

    ``probs``: (K, *spatial) float class probabilities (spatial = (Y, X) or
    with leading T/Z axes); ``plane``: the T/Z index whose plane gets the
    suggestions (``()`` for 2D); ``n``: how many boxes (0 = none); ``box``:
    their side (default :func:`default_box`).

    Returns ``(entropy, rows)``: the :func:`entropy_map` ((*spatial) float32
    in [0, 1]) and up to ``n`` rows ``{"y0", "x0", "y1", "x1", "score",
    "plane"}``, most uncertain first (``score``: the mean uncertainty in the
    box; ``plane``: "i,j" or "").
    """
    entropy = entropy_map(probs)
    if n <= 0:
        return entropy, []
    u = entropy[plane] if plane else entropy
    side = box or default_box(u.shape)
    rows = []
    for y0, x0, y1, x1 in suggest_regions(u, n=n, box=side):
        rows.append({"y0": y0, "x0": x0, "y1": y1, "x1": x1, "score": float(u[y0:y1, x0:x1].mean()),
                     "plane": ",".join(str(int(i)) for i in plane)})
    return entropy, rows
