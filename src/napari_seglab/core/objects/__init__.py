"""Per-pixel maps to objects: instance decoding (flows, distances, watershed), refinement,
measurements (whole, or block by block: ``_block_measure``), uncertainty.

Modules: ``_instances`` (labels from probabilities, measurements, boxes of objects), ``_flows``
(the flows and distance heads: targets, decoding), ``_refine`` (edge snapping of a foreground),
``_uncertainty`` (where to paint next), ``_volume`` (3D objects: planes linked, 3D fields decoded), ``_assist`` (predicted objects offered as painted ones: the
object under a click, confident and doubtful objects where nothing is painted).
"""

from ._assist import AssistReport, assess_objects, flow_agreement, new_objects, object_at
from ._block_measure import MAX_SHAPE_SIDE, measure_blocks
from ._flows import decode, head_loss, n_outputs, targets, transform
from ._instances import (
    FRAGMENT_FRACTION,
    SPLIT_SOLIDITY,
    WEAK_BORDER,
    boundary_targets,
    boxes_from_labels,
    instances_from_foreground,
    instances_from_probabilities,
    measure_objects,
    merge_weak_borders,
    otsu_watershed,
    solidity,
    split_non_convex,
    split_solidity,
    summarize_objects,
    typical_solidity,
)
from ._refine import SPLIT_THRESHOLD, snap_to_edges
from ._uncertainty import default_box, entropy_map, margin_map, paint_next, suggest_regions
from ._volume import HEADS_3D, LINK_IOU, decode_volume, link_planes

__all__ = [
    "MAX_SHAPE_SIDE", "measure_blocks", "AssistReport", "HEADS_3D", "LINK_IOU", "decode_volume", "link_planes", "FRAGMENT_FRACTION", "SPLIT_SOLIDITY", "SPLIT_THRESHOLD", "WEAK_BORDER", "assess_objects", "boundary_targets",
    "boxes_from_labels", "decode", "default_box", "entropy_map", "flow_agreement", "head_loss",
    "instances_from_foreground", "instances_from_probabilities", "margin_map", "measure_objects",
    "merge_weak_borders", "n_outputs", "new_objects", "object_at", "otsu_watershed", "paint_next", "snap_to_edges",
    "solidity", "split_non_convex", "split_solidity", "suggest_regions", "summarize_objects", "targets", "transform", "typical_solidity",
]
