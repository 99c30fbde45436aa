"""One colour per class, the same in scribbles, live previews, predictions and corrections.

A class keeps its colour whatever layer shows it: in scribbles value v is
class v - 1 (1 = background), in a semantic prediction and in ``classes``
labels value k is class k (0, the background, is not drawn). Object ids
(``instances``) keep napari's own colour per object. No napari import at
module level: the sample data uses the plain dictionaries.
"""

from __future__ import annotations

from .core.labels import MODES, get_mode
from .core.models import Kind

#: colour of class 0 (background), then of classes 1, 2, ... (which cycle past the end)
CLASS_COLORS = ("#4f7dff", "#ffd400", "#ff4fd8", "#7cff4f", "#ff8c1a", "#00e5ff", "#b08cff", "#ff5252")
#: label values given a colour (larger values are not drawn)
MAX_VALUE = 255
#: ``layer.metadata`` key: the kind of colours SegLab gave a layer ("scribbles", "classes")
COLORS_KEY = "seglab_colors"
TRANSPARENT = "transparent"


def class_color(index: int) -> str:
    """The colour of class ``index`` (0 = background)."""
    if index <= 0:
        return CLASS_COLORS[0]
    return CLASS_COLORS[1 + (index - 1) % (len(CLASS_COLORS) - 1)]


def value_colors(kind: str) -> dict | None:
    """``{label value: colour}`` (with ``None``: values not listed) for labels of ``kind``.

    ``kind``: a label mode ("scribbles": value v is class v - 1; "classes":
    value k is class k) or "semantic" (a prediction: value k is class k);
    object modes and "instances" give None (napari's colour per object).
    """
    if kind == "semantic":
        shift = 0
    elif kind in MODES and not MODES[kind].instances:
        shift = MODES[kind].shift
    else:
        return None
    colors: dict = {None: TRANSPARENT, 0: TRANSPARENT}
    colors.update({value: class_color(value - shift) for value in range(1, MAX_VALUE + 1)})
    return colors


def apply_colors(layer, kind: str, *, force: bool = True) -> None:
    """Colour the Labels ``layer`` as labels of ``kind`` (see :func:`value_colors`).

    ``force=False`` leaves alone a layer whose colours the user chose (one
    that has neither napari's default colours nor SegLab's).
    """
    from napari.utils.colormaps import CyclicLabelColormap, label_colormap

    ours = layer.metadata.get(COLORS_KEY)
    if not force and ours is None and not isinstance(layer.colormap, CyclicLabelColormap):
        return
    colors = value_colors(kind)
    if colors is None:
        if ours is not None:  # back to napari's colour per object
            layer.colormap = label_colormap()
            layer.metadata.pop(COLORS_KEY, None)
        return
    if ours != kind:
        layer.colormap = colors
        layer.metadata[COLORS_KEY] = kind


def prediction_kind(label_mode: str, kind) -> str:
    """The colours of a model's prediction of ``kind`` (a Kind or its value): "semantic" for classes,
    "instances" for object ids."""
    return "instances" if Kind(kind).instances or get_mode(label_mode).instances else "semantic"


def swatch(index: int) -> str:
    """A coloured square (rich text) for class ``index``."""
    return f'<span style="color:{class_color(index)}">\u25a0</span>'


def legend_html(mode: str, classes: int = 2) -> str:
    """The label legend of ``mode`` with the colour of each class, one convention per line."""
    mode = get_mode(mode)
    if mode.instances:
        return mode.legend.replace("; ", "<br>") + ", each its own colour"
    lines = ["0 = not annotated (ignored)", f"{swatch(0)} {mode.shift} = background"] if mode.sparse else \
        ["0 = background (every pixel annotated)"]
    lines += [f"{swatch(c)} {c + mode.shift} = class {c}" for c in range(1, classes + 1)]
    lines[-1] += ", ..."
    return "<br>".join(lines)
