"""napari layers <-> core arrays.

Core arrays use canonical axes (a subset of ``TZYXC``, channels last; see
:mod:`napari_seglab.core.io`). A napari image layer's data maps onto them as:

- an RGB(A) layer (``layer.rgb``): ``(..., Y, X, 3|4)`` -> axes ending in ``C``;
- any other layer: every axis is spatial or a stack axis, ``(Y, X)``,
  ``(Z, Y, X)``, ``(T, Z, Y, X)``; a model with C input channels may also take
  a ``(C, Y, X)`` layer whose first axis has C entries (napari's layout for a
  multichannel image opened without ``channel_axis``).

Output layers (labels, probabilities, boxes, uncertainty, "paint next"
boxes, live previews, corrections) reuse the image layer's scale and
translate so they overlay the image, and update a layer of the same name
instead of stacking copies: adding or removing a napari layer costs the GUI
thread far more than updating one.
"""

from __future__ import annotations

import contextlib

import numpy as np
from napari.layers import Image, Labels, Shapes

from ._colors import apply_colors
from .core.data import anisotropy_from_pixel_size
from .core.errors import InputError
from .core.io import guess_axes
from .core.labels import boxes_to_rectangles, get_mode

#: more boxes than this are not drawn (the Shapes layer gets slow); the best-scoring are kept
MAX_BOXES = 3000
BOX_TEXT = {"string": "{class}: {score:.2f}", "size": 8, "color": "white", "anchor": "upper_left"}
BOX_COLORS = ("#ffd400", "#00e5ff", "#ff4fd8", "#7cff4f", "#ff8c1a", "#b08cff")
#: ``layer.metadata`` key saying what wrote a layer ("prediction", "preview", "correction", "suggestions")
ROLE = "seglab_role"


def _level0(data):
    """The full-resolution array of a (possibly multiscale, possibly lazy) layer, as numpy."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        data = data[0]
    return np.array(data, copy=True)


def image_from_layer(layer, channels: int | None = None) -> tuple[np.ndarray, str]:
    """A copy of an image layer's data and its canonical axes.

    Returns ``(array, axes)``: e.g. ``((Y, X) uint16, "YX")``, ``((Z, Y, X, 3)
    uint8, "ZYXC")``. ``channels``: the channel count a model expects; a non-RGB
    ``(C, Y, X)`` layer with that many leading entries is read as channels.
    """
    data = _level0(layer.data)
    if getattr(layer, "rgb", False):
        return data, guess_axes(data.shape, rgb=True)
    if channels and channels > 1 and data.ndim == 3 and data.shape[0] == channels:
        return np.moveaxis(data, 0, -1).copy(), "YXC"
    if data.ndim > 4:
        raise InputError(f"layer {layer.name!r} has {data.ndim} dimensions; non-RGB images need 2 to 4 (T, Z, Y, X)")
    return data, guess_axes(data.shape, rgb=False)


def layer_pixel_size(layer) -> float | None:
    """µm per pixel of an image layer from its Y and X ``scale``, when the user (or a reader) set one.

    napari's default scale (1, 1) says nothing, so it gives None; unequal Y and X give their geometric
    mean (the core resamples planes by one factor).
    """
    if layer is None:
        return None
    scale = np.asarray(getattr(layer, "scale", ()), float)[-2:]
    if scale.size != 2 or not np.all(np.isfinite(scale)) or np.any(scale <= 0) or np.allclose(scale, 1.0):
        return None
    return float(np.sqrt(scale[0] * scale[1]))


def layer_voxel_size(layer, axes: str) -> tuple[float, ...] | None:
    """The (z, y, x) scale of an image layer as the voxel size, or None when it is napari's default (all 1)."""
    if "Z" not in axes or layer.ndim < 3:
        return None
    scale = tuple(float(s) for s in layer.scale[-3:])
    return None if all(s == 1.0 for s in scale) else scale


def layer_anisotropy(layer) -> float | None:
    """z step over the pixel size of a stack's image layer (its scale), or None when the scale says nothing."""
    voxel = layer_voxel_size(layer, "ZYX") if layer is not None else None
    value = anisotropy_from_pixel_size(voxel, "ZYX")
    return value if value is not None and 0.1 <= value <= 50 else None  # beyond what a z step is: not a voxel size


def spatial_shape(array: np.ndarray, axes: str) -> tuple[int, ...]:
    """The shape without the channel axis (what labels of this image must have)."""
    return tuple(array.shape[:-1]) if "C" in axes else tuple(array.shape)


def labels_from_layer(layer) -> np.ndarray:
    """A copy of a labels layer's data (full resolution), any integer dtype."""
    return _level0(layer.data)


def labels_shape(layer) -> tuple[int, ...]:
    """The full-resolution shape of a layer's data (nothing is copied)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return tuple(data.shape)


def current_plane(viewer, layer, axes: str) -> tuple[int, ...]:
    """Index over the T/Z axes of the plane the viewer shows for ``layer`` (``()`` for 2D)."""
    lead = [i for i, a in enumerate(axes) if a in "TZ"]
    if not lead:
        return ()
    data_pos = layer.world_to_data(viewer.dims.point)
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    return tuple(int(np.clip(round(float(data_pos[i])), 0, shape[i] - 1)) for i in lead)


def _placement(like, ndim: int) -> dict:
    """scale/translate of layer ``like`` for a layer with ``ndim`` dimensions."""
    if like is None:
        return {}
    scale, translate = np.asarray(like.scale), np.asarray(like.translate)
    if len(scale) < ndim:  # a leading class axis, say
        scale = np.concatenate([np.ones(ndim - len(scale)), scale])
        translate = np.concatenate([np.zeros(ndim - len(translate)), translate])
    return {"scale": tuple(scale[-ndim:]), "translate": tuple(translate[-ndim:])}


#: metadata key SegLab sets on every layer it makes (the value: the name it was made under)
OWNER = "seglab_layer"


def _ours(layer) -> bool:
    """True for a layer SegLab made (an output, a preview, a correction), False for the user's own."""
    return any(key in layer.metadata for key in (OWNER, ROLE, "seglab_boxes"))


def _made(layer, name: str):
    """Mark a new layer as SegLab's, so a later update may reuse or replace it; returns it."""
    layer.metadata[OWNER] = name
    return layer


def _existing(viewer, name: str, kind: type):
    """SegLab's layer called ``name`` if it is a ``kind`` (one of another kind is removed), else None.

    A layer the user made or loaded under that name (their own boxes called
    "cells boxes", say) is never reused or removed: SegLab then adds its own
    beside it, and napari gives that one a numbered name.
    """
    layer = next((existing for existing in viewer.layers if existing.name == name), None)
    if layer is not None and not _ours(layer):  # ours, if any, got a numbered name beside the user's
        layer = next((other for other in viewer.layers if other.metadata.get(OWNER) == name), None)
    if layer is not None:
        # isinstance, not type(): plugin widgets see layers through napari's PublicOnlyProxy
        if isinstance(layer, kind):
            return layer
        viewer.layers.remove(layer)
    return None


def show_labels(viewer, labels: np.ndarray, name: str, like=None, plane: tuple[int, ...] | None = None,
                role: str | None = None, colors: str | None = None):
    """Add labels as a Labels layer ``name``, or update the layer of that name.

    ``labels``: the image's spatial shape, integer. With ``plane`` given (an
    index over the leading T/Z axes), only that plane of an existing layer of
    the same shape is replaced and the other planes keep their values.
    ``role`` is stored as ``layer.metadata[ROLE]`` ("prediction", "preview",
    "correction"): model output is never mistaken for an annotation.
    ``colors``: colour the values as labels of that kind ("scribbles",
    "classes", "semantic", "instances"; see :mod:`._colors`).
    """
    labels = np.asarray(labels)
    layer = _existing(viewer, name, Labels)
    if layer is not None and layer.data.shape == labels.shape and not layer.multiscale:
        if plane:
            data = layer.data
            if not np.can_cast(labels.dtype, data.dtype):
                data = data.astype(np.result_type(data.dtype, labels.dtype))
            data[plane] = labels[plane]
            layer.data = data
        else:
            layer.data = labels
        layer.refresh()
    else:
        if layer is not None:
            viewer.layers.remove(layer)
        layer = _made(viewer.add_labels(labels, name=name, **_placement(like, labels.ndim)), name)
    if role is not None:
        layer.metadata[ROLE] = role
    if colors is not None:
        apply_colors(layer, colors)
    return layer


def show_volume(labels_layer, image_layer, anisotropy: float, objects: list[dict] | None = None) -> None:
    """3D labels shown at their true proportions: the z scale is ``anisotropy`` times the y scale.

    The image layer gets the same scale (it is left as it was when it already has it), so both
    stay aligned in the 3D view; ``objects`` (rows of measurements with ``label``) become the
    labels layer's features.
    """
    scale = np.asarray(labels_layer.scale, float)
    if len(scale) >= 3:
        scale[-3] = anisotropy * scale[-2]
        labels_layer.scale = tuple(scale)
        if image_layer is not None and not image_layer.rgb and len(image_layer.scale) == len(scale) \
                and not np.allclose(image_layer.scale, scale):
            image_layer.scale = tuple(scale)
    if objects:
        keys = [k for k in objects[0] if k != "label"]
        labels_layer.features = {"index": [r["label"] for r in objects], **{k: [r.get(k) for r in objects]
                                                                           for k in keys}}


def show_plane(viewer, plane_labels: np.ndarray, name: str, spatial: tuple[int, ...],
               plane: tuple[int, ...] = (), like=None, below=None, reset: bool = False, colors: str | None = None):
    """Write one plane of labels into the Labels layer ``name`` (created once, then updated in place).

    ``plane_labels``: ``(Y, X)`` integer (uint8/uint16 keep the update cheap);
    ``spatial``: the full labels shape; ``plane``: the T/Z index (``()`` for
    2D). Only that plane changes, so a live preview of a large stack costs
    the GUI thread one plane per update. ``reset`` clears the other planes
    of an existing layer too. A new layer goes just ``below`` the given
    layer and leaves the user's selection alone; a hidden one is shown again.
    ``colors``: as in :func:`show_labels`.
    """
    plane_labels = np.asarray(plane_labels)
    layer = _existing(viewer, name, Labels)
    if layer is not None and tuple(layer.data.shape) == tuple(spatial) and not layer.multiscale \
            and np.can_cast(plane_labels.dtype, layer.data.dtype):
        if plane and not reset:
            layer.data[plane] = plane_labels
            layer.refresh()
        else:
            layer.data = _full(plane_labels, spatial, plane)
        layer.visible = True
        if colors is not None:
            apply_colors(layer, colors)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    data = _full(plane_labels, spatial, plane)
    with kept_selection(viewer):
        layer = _made(viewer.add_labels(data, name=name, opacity=0.5, **_placement(like, data.ndim)), name)
    layer.metadata[ROLE] = "preview"
    if colors is not None:
        apply_colors(layer, colors)
    if below is not None and below in viewer.layers:
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(below))
    return layer


def _full(plane_labels: np.ndarray, spatial: tuple[int, ...], plane: tuple[int, ...]) -> np.ndarray:
    if not plane:
        return plane_labels
    data = np.zeros(spatial, plane_labels.dtype)
    data[plane] = plane_labels
    return data


def promote_preview(viewer, labels: np.ndarray, preview_name: str, name: str, like=None,
                    colors: str | None = None):
    """Show final ``labels`` as ``name``, reusing the live-preview layer ``preview_name`` when possible.

    Adding and removing napari layers costs the GUI thread a few hundred
    milliseconds each, so the preview layer is renamed when ``name`` does
    not exist yet; otherwise ``name`` is updated and the preview, now stale,
    is removed. The user's selection is kept either way.
    """
    preview = _existing(viewer, preview_name, Labels)
    with kept_selection(viewer):
        if preview is not None and name not in viewer.layers and preview.data.shape == np.shape(labels):
            preview.data = np.asarray(labels)
            preview.name = name
            _made(preview, name)
            preview.opacity = 0.7
            preview.metadata[ROLE] = "prediction"
            if colors is not None:
                apply_colors(preview, colors)
            return preview
        layer = show_labels(viewer, labels, name, like=like, role="prediction", colors=colors)
        remove_layer(viewer, preview_name, Labels)
    return layer


def remove_layer(viewer, name: str, kind: type = Labels) -> bool:
    """Remove SegLab's ``kind`` layer called ``name`` if there is one; True if one was removed."""
    layer = next((existing for existing in viewer.layers if existing.name == name), None)
    if isinstance(layer, kind) and _ours(layer):
        viewer.layers.remove(layer)
        return True
    return False


def reserve(viewer, kind: str, name: str, shape: tuple[int, ...], like=None):
    """Create an empty output layer ``name`` now, unless a fitting one exists; returns it if created, else None.

    ``kind``: "labels" (uint16 zeros), "uncertainty" (float32 zeros) or
    "regions" (no boxes; ``shape`` gives only its dimensionality). Called
    when the user presses a button, so that the layer creation happens in
    answer to the click and the result only updates data. The selection is
    kept.
    """
    cls = {"labels": Labels, "uncertainty": Image, "regions": Shapes}[kind]
    layer = next((existing for existing in viewer.layers if existing.name == name), None)
    if isinstance(layer, cls) and _ours(layer) and (kind == "regions" and layer.ndim == len(shape)
                                   or kind != "regions" and labels_shape(layer) == tuple(shape)):
        return None
    with kept_selection(viewer):
        if kind == "labels":
            return show_labels(viewer, np.zeros(shape, np.uint16), name, like=like, role="prediction")
        if kind == "uncertainty":
            return show_uncertainty(viewer, np.zeros(shape, np.float32), name, like=like)
        return show_regions(viewer, [], name, like=like, ndim=len(shape))


@contextlib.contextmanager
def kept_selection(viewer):
    """Layers added inside the block do not take the selection (the user may be painting)."""
    active = viewer.layers.selection.active
    selected = [layer for layer in viewer.layers.selection if layer is not active]
    try:
        yield
    finally:
        if active is not None and active in viewer.layers:
            viewer.layers.selection.clear()
            viewer.layers.selection.update([layer for layer in selected if layer in viewer.layers])
            viewer.layers.selection.active = active


def show_correction(viewer, labels: np.ndarray, name: str, mode: str, like=None):
    """Put editable labels (see :func:`correction_labels`) in the Labels layer ``name``, ready to paint.

    The layer becomes the selected one, in paint mode, with a label that
    helps: a new object id (instances) or the first class (scribbles,
    classes). Its classes have the colours of the prediction's.
    """
    layer = show_labels(viewer, labels, name, like=like, role="correction", colors=mode)
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    layer.selected_label = get_mode(mode).new_label(layer.data)
    return layer


def show_uncertainty(viewer, uncertainty: np.ndarray, name: str, like=None):
    """Show a ``(*spatial)`` float32 map in [0, 1] as the Image layer ``name`` (magma, fixed 0..1)."""
    uncertainty = np.asarray(uncertainty, dtype=np.float32)
    layer = _existing(viewer, name, Image)
    if layer is not None and layer.data.shape == uncertainty.shape:
        layer.data = uncertainty
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return _made(viewer.add_image(uncertainty, name=name, colormap="magma", contrast_limits=(0.0, 1.0),
                                  blending="additive", opacity=0.8, **_placement(like, uncertainty.ndim)), name)


def show_regions(viewer, rows: list[dict], name: str, like=None, ndim: int = 2):
    """Draw "paint here next" boxes (rows y0, x0, y1, x1[, plane], most uncertain first) as numbered rectangles.

    An existing Shapes layer ``name`` of that dimensionality is redrawn in place.
    """
    layer = _existing(viewer, name, Shapes)
    if layer is not None and layer.ndim != ndim:
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        layer = viewer.add_shapes(name=name, ndim=ndim, face_color="transparent", edge_width=2,
                                  features={"rank": np.zeros(0, int)},
                                  text={"string": "{rank}", "size": 10, "color": "#00e5ff", "anchor": "upper_left"},
                                  **_placement(like, ndim))
        layer.metadata[ROLE] = "suggestions"
    layer.data = []
    if rows:
        layer.add_rectangles(boxes_to_rectangles(rows, ndim), edge_color="#00e5ff", face_color="transparent")
    layer.features = {"rank": np.arange(1, len(rows) + 1, dtype=int)}
    layer.refresh()
    return layer


def show_probabilities(viewer, probabilities: np.ndarray, base_name: str, like=None,
                       class_names=None) -> list:
    """Add one Image layer per foreground class from ``(K, *spatial)`` float32 probabilities.

    Two classes give one layer ``"<base_name> probability"``; more give
    ``"<base_name> p(<class name>)"`` per class k >= 1. Returns the layers.
    """
    probabilities = np.asarray(probabilities)
    k = probabilities.shape[0]
    layers = []
    colormaps = ("magma", "green", "magenta", "cyan", "yellow", "red", "blue")
    for c in range(1, k):
        if k == 2:
            name = f"{base_name} probability"
        else:
            cname = class_names[c] if class_names and c < len(class_names) else f"class {c}"
            name = f"{base_name} p({cname})"
        data = probabilities[c]
        layer = _existing(viewer, name, Image)
        if layer is not None and layer.data.shape == data.shape:
            layer.data = data
        else:
            if layer is not None:
                viewer.layers.remove(layer)
            layer = _made(viewer.add_image(data, name=name, colormap=colormaps[(c - 1) % len(colormaps)],
                                           contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7,
                                           **_placement(like, data.ndim)), name)
        layers.append(layer)
    return layers


def keep_best(rows: list[dict], limit: int | None = None) -> tuple[list[dict], int]:
    """The ``limit`` (default :data:`MAX_BOXES`) best-scoring rows, in their order, and how many were dropped."""
    limit = MAX_BOXES if limit is None else limit
    if len(rows) <= limit:
        return list(rows), 0
    order = np.argsort([-float(r.get("score", 0.0)) for r in rows], kind="stable")[:limit]
    return [rows[i] for i in sorted(order)], len(rows) - limit


def _box_features(rows: list[dict]) -> dict:
    return {"class": np.array([int(r.get("class", 1)) for r in rows], dtype=int),
            "score": np.array([float(r.get("score", 1.0)) for r in rows], dtype=float)}


def _box_colors(rows: list[dict]) -> list[str]:
    return [BOX_COLORS[(int(r.get("class", 1)) - 1) % len(BOX_COLORS)] for r in rows]


def show_boxes(viewer, rows: list[dict], name: str, like=None, ndim: int = 2, score_threshold: float = 0.0):
    """Show box rows as a Shapes layer of rectangles with features ``class`` and ``score``.

    Every row is stored in ``layer.metadata["seglab_boxes"]`` so the layer can
    be re-filtered by score later (:func:`filter_boxes`) without predicting
    again. Above :data:`MAX_BOXES` rows only the best-scoring are drawn and a
    warning says so.
    """
    layer = _existing(viewer, name, Shapes)
    if layer is None:
        # created with (empty) feature columns so the text template always finds them
        layer = _made(viewer.add_shapes(name=name, ndim=ndim, face_color="transparent", edge_width=1.5,
                                        features=_box_features([]), text=BOX_TEXT, **_placement(like, ndim)), name)
    layer.metadata["seglab_boxes"] = [dict(r) for r in rows]
    layer.metadata["seglab_ndim"] = ndim
    filter_boxes(layer, score_threshold)
    return layer


def count_boxes(layer, score_threshold: float) -> int:
    """How many stored rows of a :func:`show_boxes` layer score >= ``score_threshold`` (drawn or not)."""
    return sum(float(r.get("score", 1.0)) >= score_threshold for r in layer.metadata.get("seglab_boxes", []))


def filter_boxes(layer, score_threshold: float) -> int:
    """Redraw a :func:`show_boxes` layer with the stored rows scoring >= ``score_threshold``.

    Returns the number of rectangles drawn.
    """
    rows = [r for r in layer.metadata.get("seglab_boxes", []) if float(r.get("score", 1.0)) >= score_threshold]
    rows, dropped = keep_best(rows)
    if dropped:
        from napari.utils.notifications import show_warning

        show_warning(f"{len(rows) + dropped} boxes: drawing the {len(rows)} best-scoring only; "
                     "raise the score threshold to see fewer")
    ndim = int(layer.metadata.get("seglab_ndim", layer.ndim))
    layer.data = []
    if rows:
        layer.add_rectangles(boxes_to_rectangles(rows, ndim), edge_color=_box_colors(rows),
                             face_color="transparent")
    layer.features = _box_features(rows)
    layer.refresh()
    return len(rows)
