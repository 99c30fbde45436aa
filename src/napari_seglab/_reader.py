"""npe2 reader contribution: OME-Zarr stores (SegLab's outputs and any NGFF 0.4 / 0.5 image) as lazy layers.

:func:`napari_get_reader` answers for a folder that is an OME-Zarr with ``multiscales`` metadata and
returns None for anything else, so other readers get it. The layers hold the zarr arrays themselves
(every level, a multiscale layer when there are several): nothing is read until napari draws it.

- SegLab's label outputs (``multiscales`` named "labels", or NGFF ``image-label`` metadata) and the
  stores listed in an image's ``labels`` group become Labels layers;
- anything else becomes an Image layer, split along its channel axis (``c``) when it has one
  (SegLab's probabilities: one layer per class).

The level-0 scale (µm when the store says so) and translation become the layer's ``scale`` and
``translate``. No napari import: the functions return LayerDataTuples ``(data, metadata, type)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: the multiscales name SegLab's OmeZarrWriter gives a labels store
LABELS_NAME = "labels"


def _ome(attrs: dict) -> dict:
    """The OME metadata of a group: NGFF 0.5 nests it under "ome", 0.4 keeps it at the top."""
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome", attrs), dict) else {}


def _multiscales(group) -> dict | None:
    try:
        ms = _ome(dict(group.attrs)).get("multiscales")
    except Exception:  # attributes that are not JSON objects: not ours to read
        return None
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict) or not ms[0].get("datasets"):
        return None
    return ms[0]


def _open_group(path: Path):
    """The zarr group at ``path``, or None when it is not one (or cannot be read)."""
    try:
        import zarr

        node = zarr.open(str(path), mode="r")
    except Exception:  # zarr raises several kinds for a folder that is not a store
        return None
    return node if hasattr(node, "array_keys") else None


def _transforms(meta: dict, axes: list[str]) -> dict:
    """scale and translate of the level-0 dataset (the multiscale's own transformations applied after)."""
    ndim = len(axes)
    scale, translate = [1.0] * ndim, [0.0] * ndim
    first = meta["datasets"][0].get("coordinateTransformations", [])
    for t in list(first) + list(meta.get("coordinateTransformations", [])):
        if not isinstance(t, dict) or len(t.get("scale", t.get("translation", ()))) != ndim:
            continue
        if t.get("type") == "scale":
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
        elif t.get("type") == "translation":
            translate = [a + float(b) for a, b in zip(translate, t["translation"], strict=True)]
    return {"scale": scale, "translate": translate}


def _axis_names(meta: dict, ndim: int) -> list[str]:
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in meta.get("axes", [])]
    return [n.lower() for n in names] if len(names) == ndim else list("tczyx"[-ndim:])


def _is_labels(group, meta: dict) -> bool:
    attrs = _ome(dict(group.attrs))
    return "image-label" in attrs or meta.get("name") == LABELS_NAME and "seglab" in dict(group.attrs)


def store_layers(path: str | os.PathLike) -> list[tuple] | None:
    """LayerDataTuples of the OME-Zarr at ``path`` (lazy zarr arrays), or None when it is not an OME-Zarr."""
    path = Path(path)
    group = _open_group(path)
    meta = _multiscales(group) if group is not None else None
    if meta is None:
        return None
    try:
        levels = [group[d["path"]] for d in meta["datasets"]]
    except (KeyError, TypeError):
        return None
    if not levels or any(not hasattr(level, "shape") for level in levels):
        return None
    axes = _axis_names(meta, levels[0].ndim)
    data = levels if len(levels) > 1 else levels[0]
    name = path.name.removesuffix(".zarr").removesuffix(".ome")
    kwargs = {"name": name, "multiscale": len(levels) > 1, **_transforms(meta, axes),
              "metadata": {"seglab_store": str(path)}}
    if _is_labels(group, meta):
        if "c" in axes:  # a labels store with channels is not a label image napari can show
            return None
        layers = [(data, kwargs, "labels")]
    elif "c" in axes and levels[0].shape[axes.index("c")] > 1:
        c = axes.index("c")
        kwargs["channel_axis"] = c
        kwargs["name"] = [f"{name} {k}" for k in range(levels[0].shape[c])]
        for key in ("scale", "translate"):
            kwargs[key] = [v for i, v in enumerate(kwargs[key]) if i != c]
        layers = [(data, kwargs, "image")]
    else:
        layers = [(data, kwargs, "image")]
    # an NGFF image with a "labels" group: its label images come along
    try:
        names = _ome(dict(group["labels"].attrs)).get("labels", []) if "labels" in group else []
    except Exception:
        names = []
    for label_name in names if isinstance(names, list) else []:
        inner = store_layers(path / "labels" / str(label_name))
        if inner:
            layers += [layer for layer in inner if layer[2] == "labels"]
    return layers


def napari_get_reader(path: str | os.PathLike | list) -> Callable | None:
    """The reader for ``path`` when it is an OME-Zarr folder, else None (another reader may take it)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.is_dir() or store_layers(p) is None:
        return None
    return read_ome_zarr


def read_ome_zarr(path: str | os.PathLike | list) -> list[tuple]:
    """Layers of one OME-Zarr folder (see the module docstring); [] when it cannot be read."""
    if isinstance(path, (list, tuple)):
        return [layer for p in path for layer in (store_layers(p) or [])]
    return store_layers(path) or []
