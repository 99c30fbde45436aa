"""TrainWidget: train a model on an image layer and a painted labels layer."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels

from .. import _layers
from ..core.device import DEVICES
from ..core.errors import InputError
from ..core.events import CheckpointSaved, EpochEnd, Message, Preview, TileDone, TrainStep
from ..core.labels import LABEL_MODES, LEGEND
from ..core.models import (
    DEFAULT_ARCH,
    DEFAULT_ENCODER,
    FAMILIES,
    FCN_ARCHS,
    MASKRCNN_ARCHS,
    SMP_ARCHS,
)
from ..core.predict import load_model, predict_image
from ..core.train import TrainConfig, TrainResult, train
from . import _common as ui
from ._worker import JobSlot, error_text, report_error, stop_on_destroy

if TYPE_CHECKING:
    import napari

ARCHS = {"unet": SMP_ARCHS, "fcn": FCN_ARCHS, "maskrcnn": MASKRCNN_ARCHS}
MODELS_DIR = Path.home() / "seglab_models"
COMMON_ENCODERS = ("resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b3",
                   "mobilenet_v2", "densenet121", "vgg16_bn", "timm-regnety_004")


def default_model_path() -> Path:
    """``~/seglab_models/model_<YYYYmmdd-HHMMSS>.pt``."""
    return MODELS_DIR / f"model_{time.strftime('%Y%m%d-%H%M%S')}.pt"


def train_then_predict(image, axes: str, labels, config: TrainConfig, preview_plane, stop: threading.Event):
    """Train, then predict the whole image with the best model.

    Yields the core's events; returns ``(TrainResult, Prediction or None)``.
    A Stop during training ends it (the best model is kept) and the image is
    still predicted; a second Stop skips that prediction.
    """
    result: TrainResult = yield from train([image], [labels], config, axes=[axes], stop=stop,
                                           preview_plane=preview_plane)
    stop.clear()
    yield Message("predicting the image with the trained model")
    model = load_model(result.checkpoint, config.device)
    prediction = yield from predict_image(model, image, axes, stop=stop)
    return result, (None if prediction.stopped else prediction)


def legend_text(mode: str) -> str:
    """The label legend of ``mode``, one convention per line."""
    return "<br>".join(LEGEND[mode].split("; "))


class TrainWidget(Container):
    """Dock widget: pick an image and its painted labels, set the model and budget, train.

    On finish the best model's prediction of the image appears as the Labels
    layer ``"<image> prediction"`` and :attr:`last_checkpoint` holds the file.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self.last_checkpoint: Path | None = None
        self.last_result: TrainResult | None = None
        self._slot = JobSlot()
        self._auto_path = default_model_path()
        self._val_dice: float | None = None
        self._target = None  # (image layer, axes, shown plane, spatial shape) of the running job

        self._image = ui.layer_picker(napari_viewer, Image, "image", "the image to learn from")
        self._labels_combo = ui.layer_picker(napari_viewer, Labels, "labels", "painted labels, same shape as the image")
        self._mode = ui.choice_combo("label mode", LABEL_MODES, "scribbles",
                                     "how to read the labels layer (see the legend below)")
        self._legend = ui.wrapped_label(legend_text("scribbles"), small=True)
        self._family = ui.choice_combo("family", FAMILIES, "unet")
        self._arch = ui.choice_combo("architecture", SMP_ARCHS, DEFAULT_ARCH["unet"])
        self._encoder = ui.choice_combo("encoder", COMMON_ENCODERS, DEFAULT_ENCODER,
                                        "encoder of the U-Net family; type any segmentation-models-pytorch name")
        self._encoder.native.setEditable(True)
        self._pretrained = ui.choice_combo("pretrained", ("none", "auto"), "none",
                                           "auto: use stock weights when already on disk (nothing is downloaded)")
        self._epochs = SpinBox(label="epochs", value=20, min=0, max=100000,
                               tooltip="0 = train for the time budget only")
        self._time = SpinBox(label="time budget (s)", value=0, min=0, max=7 * 24 * 3600, step=10,
                             tooltip="0 = no limit; training stops at the epochs or the budget, whichever comes first")
        self._steps = SpinBox(label="steps per epoch", value=25, min=1, max=100000)
        self._patch = SpinBox(label="patch", value=256, min=32, max=2048, step=32)
        self._batch = SpinBox(label="batch size", value=8, min=1, max=256)
        self._lr = LineEdit(label="learning rate", value="1e-3")
        self._device = ui.choice_combo("device", DEVICES, "auto")
        self._preview = SpinBox(label="live preview every", value=0, min=0, max=10000,
                                tooltip="steps between live predictions of the shown plane; 0 = off")
        self._save_to = ui.file_picker("save to", "w", "*.pt", value=self._auto_path,
                                       tooltip="the best model is written here; empty = keep it in memory only")
        self._read_255 = CheckBox(text="read 255 as foreground", value=False)
        self._controls = ui.RunControls("Train", self._on_train, self._on_stop)
        self._use_in_predict = PushButton(text="Predict with this model", enabled=False)
        self._use_in_predict.changed.connect(self._open_in_predict)

        data = ui.form("Data", [self._image, self._labels_combo, self._mode], [self._legend])
        model = ui.form("Model", [self._family, self._arch, self._encoder, self._pretrained])
        budget = ui.form("Training", [self._epochs, self._time, self._steps, self._patch, self._batch,
                                      self._lr, self._device, self._preview, self._save_to], [self._read_255])
        ui.align_labels([data, model, budget])
        self._inputs = [data, model, budget]
        super().__init__(widgets=[data, model, budget, self._controls, self._use_in_predict], labels=False)

        self._mode.changed.connect(self._on_mode)
        self._family.changed.connect(self._on_family)
        self.reset_choices()
        stop_on_destroy(self.native, self._slot)

    # ------------------------------------------------------------------ state and settings
    @property
    def busy(self) -> bool:
        return self._slot.busy

    def config(self) -> TrainConfig:
        """The TrainConfig the controls describe (raises InputError on a bad value)."""
        try:
            lr = float(self._lr.value)
        except ValueError:
            raise InputError(f"learning rate {self._lr.value!r} is not a number (e.g. 1e-3)") from None
        save_to = ui.path_or_none(self._save_to)
        family = self._family.value
        return TrainConfig(
            label_mode=self._mode.value, family=family, arch=self._arch.value,
            encoder=self._encoder.native.currentText().strip() or DEFAULT_ENCODER,
            pretrained=None if self._pretrained.value == "none" else self._pretrained.value,
            epochs=self._epochs.value or None, time_limit=float(self._time.value) or None,
            steps_per_epoch=self._steps.value, patch=self._patch.value, batch_size=self._batch.value,
            lr=lr, device=self._device.value, model_out=str(save_to) if save_to else None,
            preview_every=self._preview.value, read_255_as_foreground=self._read_255.value,
        ).check()

    # ------------------------------------------------------------------ callbacks
    def _on_mode(self, mode: str) -> None:
        self._legend.value = legend_text(mode)

    def _on_family(self, family: str) -> None:
        self._arch.choices = ARCHS[family]
        self._arch.value = DEFAULT_ARCH[family]
        self._encoder.enabled = family == "unet"
        if family == "maskrcnn":
            self._mode.value = "instances"

    def _on_train(self) -> None:
        try:
            self._start()
        except InputError as exc:
            report_error(exc)
            self._controls.say(error_text(exc))

    def _start(self) -> None:
        image_layer, labels_layer = self._image.value, self._labels_combo.value
        if image_layer is None:
            raise InputError("no image layer: open an image first")
        if labels_layer is None:
            raise InputError("no labels layer: add a Labels layer and paint on it")
        config = self.config()
        if config.model_out and Path(config.model_out).parent == MODELS_DIR:
            MODELS_DIR.mkdir(parents=True, exist_ok=True)
        # copy on the main thread: the user may keep painting while the worker trains
        image, axes = _layers.image_from_layer(image_layer)
        labels = _layers.labels_from_layer(labels_layer)
        plane = _layers.current_plane(self._viewer, image_layer, axes)
        preview_plane = (image[plane] if plane else image) if config.preview_every else None
        self._target = (image_layer, axes, plane, _layers.spatial_shape(image, axes))
        self._val_dice = None
        self._controls.set_fraction(0)
        self._controls.say("starting...")
        self._set_busy(True)
        self._slot.start(lambda stop: train_then_predict(image, axes, labels, config, preview_plane, stop),
                         on_event=self._on_event, on_result=self._on_result,
                         on_error=lambda exc: self._controls.say(error_text(exc)),
                         on_done=lambda: self._set_busy(False))

    def _on_stop(self) -> None:
        self._slot.stop()
        self._controls.say("stopping after the current step...")

    def _set_busy(self, busy: bool) -> None:
        ui.set_enabled(self._inputs, not busy)
        self._controls.set_busy(busy)

    def _prediction_name(self) -> str:
        return f"{self._target[0].name} prediction"

    def _on_event(self, event) -> None:
        say = self._controls.say
        if isinstance(event, TrainStep):
            self._controls.set_fraction(event.fraction)
            of = f"/{event.total_steps}" if event.total_steps else ""
            dice = f" | val Dice {self._val_dice:.3f}" if self._val_dice is not None else ""
            say(f"epoch {event.epoch} | step {event.step}{of} | loss {event.loss:.4f}{dice} | {event.elapsed:.0f} s")
        elif isinstance(event, EpochEnd):
            self._val_dice = event.val_dice
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = Path(event.path)
        elif isinstance(event, Preview):
            self._show_preview(event)
        elif isinstance(event, TileDone):
            self._controls.set_fraction(event.fraction)
            say(f"predicting: tile {event.tile}/{event.tiles}, plane {event.plane + 1}/{event.planes}")
        elif isinstance(event, Message):
            say(event.text)

    def _show_preview(self, event: Preview) -> None:
        layer, _axes, plane, spatial = self._target
        labels = np.asarray(event.labels)
        if plane:
            full = np.zeros(spatial, labels.dtype)
            full[plane] = labels
            labels = full
        _layers.show_labels(self._viewer, labels, self._prediction_name(), like=layer, plane=plane or None)

    def _on_result(self, value) -> None:
        result, prediction = value
        self.last_result = result
        if result.path:
            self.last_checkpoint = Path(result.path)
            self._use_in_predict.enabled = True
        layer = self._target[0]
        if prediction is not None:
            _layers.show_labels(self._viewer, prediction.labels, self._prediction_name(), like=layer)
        dice = result.checkpoint.meta.get("metrics", {}).get("val_dice")
        text = (f"{'stopped' if result.stopped else 'done'}: {result.steps} steps in {result.seconds:.0f} s"
                + (f", val Dice {dice:.3f}" if isinstance(dice, float) else "")
                + (f"; model saved to {result.path}" if result.path else "; model kept in memory only"))
        self._controls.set_fraction(1.0)
        self._controls.say(text)
        # the next run should not overwrite this model unless the user chose the file
        if ui.path_or_none(self._save_to) == self._auto_path:
            self._auto_path = default_model_path()
            if self._auto_path == Path(result.path or ""):
                self._auto_path = self._auto_path.with_name(self._auto_path.stem + "_2.pt")
            self._save_to.value = self._auto_path

    def _open_in_predict(self, *_args) -> None:
        if self.last_checkpoint is None:
            return
        _dock, widget = self._viewer.window.add_plugin_dock_widget("napari-seglab", "Predict")
        widget.set_checkpoint(self.last_checkpoint)
        if self._target is not None and self._target[0] in self._viewer.layers:
            widget.set_image(self._target[0])

