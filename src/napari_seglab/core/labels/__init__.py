"""What a user paints: label modes and their targets, and box rows.

Modules: ``_modes`` (the label modes of the legend: scribbles, instances, classes, objects, boxes;
how painted labels become targets and predictions editable labels again), ``_boxes`` (box rows,
the currency of box annotations: Shapes rectangles, CSV files, label-derived boxes).
"""

from ._boxes import (
    BOX_COLUMNS,
    boxes_array,
    boxes_to_rectangles,
    check_box,
    instance_box_rows,
    label_box_rows,
    read_boxes_csv,
    rows_from_rectangles,
)
from ._modes import (
    IGNORE,
    LABEL_MODES,
    LEGEND,
    MODES,
    OBJECT_MARGIN,
    compact_labels,
    get_mode,
    head_targets,
    is_instance_mode,
    make_target,
    n_classes_for,
    object_instances,
    to_correction,
    validate_labels,
)

__all__ = [
    "BOX_COLUMNS", "IGNORE", "OBJECT_MARGIN", "LABEL_MODES", "LEGEND", "MODES", "boxes_array", "boxes_to_rectangles",
    "check_box", "compact_labels", "get_mode", "head_targets", "is_instance_mode", "instance_box_rows", "label_box_rows",
    "make_target", "n_classes_for", "object_instances", "read_boxes_csv", "rows_from_rectangles",
    "to_correction", "validate_labels",
]
