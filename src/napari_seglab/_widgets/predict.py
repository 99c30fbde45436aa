"""PredictWidget: segment an image layer with a trained checkpoint."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, SpinBox
from napari.layers import Image

from .. import _layers
from ..core.checkpoint import Checkpoint, describe_checkpoint, load_checkpoint
from ..core.device import DEVICES
from ..core.errors import InputError
from ..core.events import Message, TileDone
from ..core.predict import LoadedModel, Prediction, load_model, predict_image
from . import _common as ui
from ._worker import JobSlot, error_text, report_error, stop_on_destroy

if TYPE_CHECKING:
    import napari


def load_and_predict(checkpoint: Checkpoint, cached: LoadedModel | None, device: str, image: np.ndarray,
                     axes: str, options: dict, stop: threading.Event):
    """Build the model (unless ``cached``) and predict; returns ``(LoadedModel, Prediction)``."""
    model = cached if cached is not None else load_model(checkpoint, device)
    if cached is None:
        yield Message(f"model loaded on {model.device}")
    prediction = yield from predict_image(model, image, axes, stop=stop, **options)
    return model, prediction


class PredictWidget(Container):
    """Dock widget: choose a checkpoint and an image layer, predict labels (and boxes).

    Outputs: Labels ``"<image> labels"`` (the image's scale and translate),
    optional probability Image layers, and a Shapes layer ``"<image> boxes"``
    when the model detects objects; the score threshold re-filters it live.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._slot = JobSlot()
        self._checkpoint: Checkpoint | None = None
        self._checkpoint_key = None
        self._model_cache: tuple[tuple, LoadedModel] | None = None
        self._target = None
        self._boxes_layer = None
        self._started = 0.0
        self.last_prediction: Prediction | None = None

        self._file = ui.file_picker("model file", "r", "*.pt", tooltip="a checkpoint written by SegLab training")
        self._about = ui.wrapped_label("choose a model file (.pt)", small=True)
        self._image = ui.layer_picker(napari_viewer, Image, "image", "the image to segment")
        self._device = ui.choice_combo("device", DEVICES, "auto")
        self._tile = SpinBox(label="tile size", value=0, min=0, max=16384, step=32,
                             tooltip="pixels per tile side; 0 = choose from the memory budget")
        self._overlap = FloatSpinBox(label="tile overlap", value=0.25, min=0.0, max=0.75, step=0.05)
        self._only_plane = CheckBox(text="only the plane shown", value=False,
                                    tooltip="for stacks: predict just the plane on screen (other planes keep their labels)")
        self._probabilities = CheckBox(text="probabilities", value=False, tooltip="also add class probability layers")
        self._split = CheckBox(text="split touching objects", value=False,
                               tooltip="turn semantic foreground into one id per object (watershed)")
        self._threshold = FloatSpinBox(label="score threshold", value=0.5, min=0.0, max=1.0, step=0.05,
                                       tooltip="minimum detection score (Mask R-CNN); changing it re-filters the boxes")
        self._controls = ui.RunControls("Predict", self._on_predict, self._on_stop)
        model = ui.form("Model", [self._file], [self._about])
        options = ui.form("Image", [self._image, self._device, self._tile, self._overlap, self._threshold],
                          [self._only_plane, self._probabilities, self._split])
        ui.align_labels([model, options])
        self._inputs = [model, options]
        super().__init__(widgets=[model, options, self._controls], labels=False)

        self._file.changed.connect(self._on_file)
        self._threshold.changed.connect(self._on_threshold)
        self.reset_choices()
        stop_on_destroy(self.native, self._slot)

    # ------------------------------------------------------------------ public helpers
    @property
    def busy(self) -> bool:
        return self._slot.busy

    def set_checkpoint(self, path: str | os.PathLike) -> None:
        """Choose the model file (shows its description)."""
        self._file.value = Path(path)
        self._on_file()  # also when the path is unchanged but the file was rewritten

    def set_image(self, layer) -> None:
        """Choose the image layer to predict."""
        self._image.value = layer

    # ------------------------------------------------------------------ checkpoint
    def _load_checkpoint(self) -> Checkpoint:
        path = ui.path_or_none(self._file)
        if path is None:
            raise InputError("choose a model file (.pt) first")
        key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else 0)
        if self._checkpoint is None or key != self._checkpoint_key:
            self._checkpoint = load_checkpoint(path)
            self._checkpoint_key = key
        return self._checkpoint

    def _on_file(self, *_args) -> None:
        if ui.path_or_none(self._file) is None:
            self._about.value = "choose a model file (.pt)"
            return
        try:
            self._about.value = describe_checkpoint(self._load_checkpoint())
        except InputError as exc:
            self._about.value = f"cannot use this file: {exc}"

    # ------------------------------------------------------------------ run
    def _on_predict(self) -> None:
        try:
            self._start()
        except InputError as exc:
            report_error(exc)
            self._controls.say(error_text(exc))

    def _start(self) -> None:
        checkpoint = self._load_checkpoint()
        layer = self._image.value
        if layer is None:
            raise InputError("no image layer: open an image first")
        image, axes = _layers.image_from_layer(layer, channels=checkpoint.spec.in_channels)
        plane = _layers.current_plane(self._viewer, layer, axes) if self._only_plane.value else ()
        options = {
            "tile": self._tile.value or None, "overlap": float(self._overlap.value),
            "planes": [plane] if plane else None, "probabilities": self._probabilities.value,
            "split_instances": self._split.value, "score_threshold": float(self._threshold.value),
        }
        key = (self._checkpoint_key, self._device.value)
        cached = self._model_cache[1] if self._model_cache and self._model_cache[0] == key else None
        self._target = (layer, plane, key)
        self._started = time.monotonic()
        self._controls.set_fraction(0)
        self._controls.say("predicting...")
        self._set_busy(True)
        device = self._device.value
        self._slot.start(lambda stop: load_and_predict(checkpoint, cached, device, image, axes, options, stop),
                         on_event=self._on_event, on_result=self._on_result,
                         on_error=lambda exc: self._controls.say(error_text(exc)),
                         on_done=lambda: self._set_busy(False))

    def _on_stop(self) -> None:
        self._slot.stop()
        self._controls.say("stopping...")

    def _set_busy(self, busy: bool) -> None:
        ui.set_enabled(self._inputs, not busy)
        self._controls.set_busy(busy)

    def _on_event(self, event) -> None:
        if isinstance(event, TileDone):
            self._controls.set_fraction(event.fraction)
            where = f", plane {event.plane + 1}/{event.planes}" if event.planes > 1 else ""
            self._controls.say(f"tile {event.tile}/{event.tiles}{where}")
        elif isinstance(event, Message):
            self._controls.say(event.text)

    def _on_result(self, value) -> None:
        model, prediction = value
        layer, plane, key = self._target
        self._model_cache = (key, model)
        self.last_prediction = prediction
        if prediction.stopped:
            self._controls.say("stopped: nothing was added")
            return
        self.show_prediction(prediction, layer, plane, class_names=model.meta.get("class_names"))
        seconds = time.monotonic() - self._started
        self._controls.set_fraction(1.0)
        labels = prediction.labels[plane] if plane else prediction.labels
        count = len(np.unique(labels)) - 1
        what = "objects" if prediction.kind == "instances" else "classes"
        self._controls.say(f"done in {seconds:.1f} s: {count} {what}"
                           + (f", {len(prediction.boxes)} boxes" if prediction.boxes else ""))

    def show_prediction(self, prediction: Prediction, layer, plane: tuple[int, ...] = (), class_names=None) -> None:
        """Put a Prediction into the viewer as layers named after the image ``layer``."""
        _layers.show_labels(self._viewer, prediction.labels, f"{layer.name} labels", like=layer,
                            plane=plane or None)
        if prediction.probabilities is not None:
            _layers.show_probabilities(self._viewer, prediction.probabilities, layer.name, like=layer,
                                       class_names=class_names)
        if prediction.boxes:
            self._boxes_layer = _layers.show_boxes(
                self._viewer, prediction.boxes, f"{layer.name} boxes", like=layer,
                ndim=prediction.labels.ndim, score_threshold=float(self._threshold.value))

    def _on_threshold(self, value: float) -> None:
        layer = self._boxes_layer
        if layer is not None and layer in self._viewer.layers and "seglab_boxes" in layer.metadata:
            shown = _layers.filter_boxes(layer, float(value))
            self._controls.say(f"{shown} boxes with score >= {value:.2f}")
