"""Scores: Dice (one policy, for validation too), IoU, instance AP (DSB2018 convention), box AP (COCO pooling over planes).

Modules: ``_metrics`` (pixel, instance and box scores), ``_box_eval`` (box scores of stacks).
"""

from ._box_eval import box_scores_by_plane, plane_key, pooled_box_scores
from ._metrics import (
    box_iou,
    box_scores,
    class_dice,
    dice,
    iou,
    match_instances,
    mean_dice,
    per_class_dice,
)

__all__ = [
    "box_iou", "box_scores", "box_scores_by_plane", "class_dice", "dice", "iou", "match_instances",
    "mean_dice", "per_class_dice", "plane_key", "pooled_box_scores",
]
