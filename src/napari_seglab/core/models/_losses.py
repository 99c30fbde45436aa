"""Segmentation losses that honour the ignore value of the targets (:data:`~napari_seglab.core.labels.IGNORE`).

Shapes: logits (B, K, Y, X) float; target (B, Y, X) int64 with IGNORE (-1) = not annotated.
K == 1 means a binary model (sigmoid); K >= 2 a softmax over classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean Dice over classes; ``probs``/``onehot`` (B, K, Y, X), ``valid`` (B, 1, Y, X).

    A training loss, not the Dice that validation and evaluation report
    (:func:`~napari_seglab.core.evaluate.per_class_dice`): it is computed on
    probabilities so that it has a gradient, over the whole batch, and
    smoothed by ``eps`` so that a batch with a few pixels of a class gives a
    gentle gradient, not a steep, noisy one. A class absent from the batch is
    left out of the mean (its smoothed Dice would only say how little it was
    painted); its false positives still cost through the classes they cover.
    """
    dims = (0, 2, 3)
    inter = (probs * onehot * valid).sum(dims)
    denom = ((probs + onehot) * valid).sum(dims)
    present = onehot.mul(valid).sum(dims) > 0
    dice = (2 * inter + eps) / (denom + eps)
    # classes absent from this batch only count through their false positives
    return 1 - dice[present].mean() if present.any() else 1 - dice.mean()


def bce_dice(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0,
             pos_weight: float | None = None, focal_gamma: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy (or focal) + Dice on a single-channel logit map."""
    valid = (target != IGNORE).unsqueeze(1).to(logits.dtype)
    if valid.sum() == 0:
        return logits.sum() * 0
    y = target.clamp(min=0).unsqueeze(1).to(logits.dtype)
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none", pos_weight=pw)
    if focal_gamma > 0:
        p = torch.sigmoid(logits)
        pt = p * y + (1 - p) * (1 - y)
        bce = bce * (1 - pt).pow(focal_gamma)
    bce = (bce * valid).sum() / valid.sum()
    probs = torch.sigmoid(logits)
    dice = soft_dice(torch.cat([1 - probs, probs], 1), torch.cat([1 - y, y], 1), valid)
    return bce + dice_weight * dice


def ce_dice(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0,
            class_weights: torch.Tensor | None = None, focal_gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy (or focal) + multi-class Dice on (B, K, Y, X) logits."""
    valid = (target != IGNORE)
    if not valid.any():
        return logits.sum() * 0
    ce = F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE, reduction="none")
    if focal_gamma > 0:
        logp = F.log_softmax(logits, 1).gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
        ce = ce * (1 - logp.exp()).pow(focal_gamma)
    ce = ce[valid].mean()
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dice = soft_dice(probs, onehot, valid.unsqueeze(1).to(probs.dtype))
    return ce + dice_weight * dice


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, class_weights=None,
                      focal_gamma: float = 0.0) -> torch.Tensor:
    """BCE+Dice for a single-channel model, CE+Dice otherwise."""
    if logits.shape[1] == 1:
        pos = None
        if class_weights is not None:
            cw = torch.as_tensor(class_weights, dtype=torch.float32)
            pos = float(cw[1] / cw[0].clamp(min=1e-6))
        return bce_dice(logits, target, pos_weight=pos, focal_gamma=focal_gamma)
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return ce_dice(logits, target, class_weights=cw, focal_gamma=focal_gamma)


def balanced_class_weights(counts, max_ratio: float = 10.0) -> list[float]:
    """Inverse-frequency class weights (mean 1), capped at ``max_ratio`` between classes."""
    counts = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    w = counts.sum() / (len(counts) * counts)
    w = w.clamp(max=w.min() * max_ratio)
    return (w / w.mean()).tolist()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, Y, X) -> class probabilities (B, max(K, 2), Y, X)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], 1)
    return torch.softmax(logits, 1)
