"""The Predict dock's block-wise path: a lazy, multiscale or large layer into an OME-Zarr, shown lazily.

The worker (:func:`predict_to_store`) loads the model and drives
:func:`~napari_seglab.core.predict.iter_predict_to_zarr` on a
:class:`~napari_seglab.core.io.LazyImage` over the layer's full-resolution level: each block reads
only its own window. The store is published when every block is done (a stopped or failed run
leaves nothing); :func:`show_store` then adds it as a Labels layer holding the zarr levels.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from napari.layers import Labels

from .. import _layers
from .._colors import apply_colors, prediction_kind
from .._reader import store_layers
from ..core.errors import InputError
from ..core.events import Message
from ..core.io import LazyImage
from ..core.models import Checkpoint
from ..core.predict import DEFAULT_BLOCK, DEFAULT_HALO
from . import _common as ui
from . import _lazy


def load_predictor(checkpoint: Checkpoint, cached, device: str, load=None):
    """Build the model for ``checkpoint`` (unless ``cached``), yielding a Message when loaded; returns it.

    ``load``: the function that loads a checkpoint or package (default: the core's ``load_model``).
    """
    from ..core.predict import is_package, load_model

    load_model = load or load_model
    if cached is not None:
        return cached
    if str(checkpoint.path).startswith("stock:"):
        from ..core.predict import load_stock

        model = load_stock(str(checkpoint.path).removeprefix("stock:"), device,
                           in_channels=checkpoint.spec.in_channels)
    elif is_package(checkpoint.path or ""):  # a bioimage.io package: its metadata came from the file itself
        model = load_model(checkpoint.path, device)
    else:
        model = load_model(checkpoint, device)
    yield Message(f"model loaded on {model.device}")
    return model


def refusal(model, split_instances: bool = False) -> str | None:
    """Why ``model`` (loaded, or a Checkpoint's metadata) cannot go block by block, in the dock's words."""
    from ..core.predict import refusal as core_refusal

    why = core_refusal(model, split_instances)
    return why.replace("--split-instances", "split touching objects") if why else None


def check_blockable(model, image: LazyImage, split_instances: bool = False) -> None:
    """InputError when ``model`` cannot predict ``image`` block by block (the dock then says why).

    A model that resamples (object scale, the layer's pixel size) goes block by block on its resampled
    grid; a factor out of range is refused by the core before anything is written.
    """
    why = refusal(model, split_instances)
    if why:
        raise InputError(f"{why} (this layer is read block by block)")


def predict_to_store(checkpoint: Checkpoint, cached, device: str, image: LazyImage, labels_path: Path,
                     options: dict, stop: threading.Event, protect: list[str]):
    """Load the model and predict ``image`` block by block into the OME-Zarr ``labels_path``; a generator.

    ``options``: ``block``, ``halo``, ``tile``, ``overlap``, ``tta``, ``split_instances`` and
    ``probabilities`` (a second store's path, or None). Returns ``(LoadedModel, BlockResult)``.
    """
    from ..core.predict import iter_predict_to_zarr

    model = yield from load_predictor(checkpoint, cached, device)
    check_blockable(model, image, options.get("split_instances", False))
    result = yield from iter_predict_to_zarr(
        model, image, labels_path, probabilities_path=options.get("probabilities"), block=options["block"],
        halo=options["halo"], tile=options.get("tile"), overlap=options["overlap"], stop=stop,
        tta=options.get("tta", False), protect=protect)
    return model, result


def _replace(viewer, name: str, kind: type) -> None:
    """Remove SegLab's earlier layer ``name`` (a user's own layer of that name stays)."""
    layer = _layers._existing(viewer, name, kind)
    if layer is not None:
        viewer.layers.remove(layer)


def show_store(viewer, path: Path, name: str, like, *, colors: str | None = None):
    """Add the labels OME-Zarr at ``path`` as a lazy Labels layer ``name`` placed like ``like``; returns it.

    The layer holds the store's zarr levels (multiscale when it has several), not a copy.
    """
    layers = store_layers(path)
    if not layers:
        raise InputError(f"{path}: the prediction's OME-Zarr cannot be read back")
    data, meta, _kind = layers[0]
    _replace(viewer, name, Labels)
    placement = _layers._placement(like, 2)
    with _layers.kept_selection(viewer):
        layer = viewer.add_labels(data, name=name, multiscale=meta["multiscale"], **placement,
                                  metadata={_layers.OWNER: name, _layers.ROLE: "prediction",
                                            "seglab_store": str(path)})
    if colors is not None:
        apply_colors(layer, colors)
    return layer


def show_probability_store(viewer, path: Path, base_name: str, like) -> list:
    """Add the probabilities OME-Zarr (C, Y, X) at ``path`` as lazy Image layers, one per class."""
    from napari.layers import Image

    layers = store_layers(path) or []
    if not layers:
        return []
    data, meta, _kind = layers[0]
    count = len(meta["name"]) if isinstance(meta["name"], list) else 1
    names = [f"{base_name} probability {k}" for k in range(count)]
    for name in names:
        _replace(viewer, name, Image)
    placement = _layers._placement(like, 2)
    with _layers.kept_selection(viewer):
        made = viewer.add_image(data, name=names if count > 1 else names[0], multiscale=meta["multiscale"],
                                channel_axis=meta.get("channel_axis"), contrast_limits=(0.0, 1.0),
                                colormap="magma", **placement)
    made = made if isinstance(made, list) else [made]
    for layer in made:
        layer.metadata[_layers.OWNER] = layer.name
        layer.metadata["seglab_store"] = str(path)
    return made


def result_text(result, seconds: float, path: Path) -> str:
    """The status line of a finished block-wise prediction."""
    count = int(result.objects)
    what = ("object" if count == 1 else "objects") if result.kind.instances else ("class" if count == 1 else "classes")
    blocks = "block" if result.blocks == 1 else "blocks"
    return f"done in {seconds:.1f} s: {count} {what}, {result.blocks} {blocks}, in {path}"


def colors_for(model, result) -> str:
    """The colours of a block-wise result: "instances" for object ids, "semantic" for classes."""
    return prediction_kind(model.label_mode, result.kind)


class BlockwisePredict:
    """The PredictWidget's block-wise run: start it from the dock's controls, show its store when done."""

    def _start_blocks(self, checkpoint: Checkpoint, layer, image) -> None:
        """Predict a lazy / multiscale / large layer block by block into an OME-Zarr (never loaded whole)."""
        pixel = float(self._pixel.value)
        if pixel:
            image.pixel_size = (pixel, pixel)
        protect = _lazy.source_paths(layer)
        path = _lazy.output_path(ui.path_or_none(self._output), layer.name, self._scratch, protect)
        options = {"block": int(self._block.value or DEFAULT_BLOCK), "halo": DEFAULT_HALO,
                   "tile": self._tile.value or None, "overlap": float(self._overlap.value), "tta": self._tta.value,
                   "split_instances": self._split.value,
                   "probabilities": _lazy.probabilities_path(path) if self._probabilities.value else None}
        key = (self._checkpoint_key, self._device.value)
        cached = self._model_cache[1] if self._model_cache and self._model_cache[0] == key else None
        device = self._device.value
        self._target = (layer, (), key)
        self._blocks = path
        self._started = time.monotonic()
        self._controls.set_fraction(0)
        h, w = image.shape[:2]
        self._controls.say(f"predicting {h}x{w} block by block into {path}")
        self._set_busy(True)
        self._slot.start(
            lambda stop: predict_to_store(checkpoint, cached, device, image, path, options, stop, protect),
            on_event=self._on_event, on_result=self._on_store_result, on_error=self._on_error,
            on_done=lambda: self._set_busy(False))

    def _on_store_result(self, value) -> None:
        model, result = value
        layer, _plane, key = self._target
        path, self._blocks = self._blocks, None
        self._model_cache = (key, model)
        self.last_prediction = None  # nothing in memory to correct
        if result.stopped:
            self._controls.say("stopped: nothing was written")
            return
        if layer not in self._viewer.layers:
            self._controls.say(f"done: the image layer was closed; the labels are in {path}")
            return
        show_store(self._viewer, path, f"{layer.name} labels", layer, colors=colors_for(model, result))
        probabilities = _lazy.probabilities_path(path)
        if self._probabilities.value and probabilities.exists():
            show_probability_store(self._viewer, probabilities, layer.name, layer)
        skipped = [name for name, on in (("uncertainty map", self._uncertainty.value),
                                         ("paint-next boxes", self._suggest.value)) if on]
        note = f"; no {' or '.join(skipped)} block by block" if skipped else ""
        self._controls.set_fraction(1.0)
        self._controls.say(result_text(result, time.monotonic() - self._started, path) + note)
