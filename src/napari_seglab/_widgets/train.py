"""TrainWidget: train on painted labels, watch it learn, continue, correct and retrain."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox
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
from ..core.uncertainty import paint_next
from . import _common as ui
from ._plot import TrainingPlot
from ._worker import JobSlot, error_text, stop_on_destroy

if TYPE_CHECKING:
    import napari

ARCHS = {"unet": SMP_ARCHS, "fcn": FCN_ARCHS, "maskrcnn": MASKRCNN_ARCHS}
MODELS_DIR = Path.home() / "seglab_models"
COMMON_ENCODERS = ("resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b3",
                   "mobilenet_v2", "densenet121", "vgg16_bn", "timm-regnety_004")
#: "where to paint next" boxes computed after training
SUGGESTIONS = 5


def default_model_path() -> Path:
    """``~/seglab_models/model_<YYYYmmdd-HHMMSS>.pt``."""
    return MODELS_DIR / f"model_{time.strftime('%Y%m%d-%H%M%S')}.pt"


def _light(event):
    """A Preview reaches the GUI thread as a uint16 plane (drawn as is) without its probabilities."""
    if isinstance(event, Preview):
        return replace(event, labels=ui.compact_labels(event.labels), probabilities=None)
    return event


def _auto_number(text: str, kind: type, what: str, example: str):
    """``"auto"`` (or empty) -> None (the core decides), else the number; InputError when neither."""
    text = str(text).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a number (e.g. {example}) or 'auto'") from None


def train_then_predict(pairs: list[tuple[np.ndarray, str, np.ndarray]], config: TrainConfig,
                       preview_plane: np.ndarray | None, plane: tuple[int, ...], stop: threading.Event):
    """Train on ``pairs`` ((image, axes, labels) copies), then predict the first image with the best model.

    Yields the core's events; returns ``(TrainResult, Prediction or None,
    (uncertainty, suggestion rows) or None)``. The uncertainty map and the
    "paint next" boxes (on ``plane``) are computed here, in the worker. A
    Stop during training ends it (the best model is kept) and the image is
    still predicted; a second Stop skips that prediction.
    """
    images, axes, labels = (list(part) for part in zip(*pairs, strict=True))
    result: TrainResult = yield from ui.relay(
        train(images, labels, config, axes=axes, stop=stop, preview_plane=preview_plane), _light)
    stop.clear()
    yield Message("predicting the image with the trained model")
    model = load_model(result.checkpoint, config.device)
    prediction = yield from predict_image(model, images[0], axes[0], probabilities=True, stop=stop)
    if prediction.stopped:
        return result, None, None
    extras = None if prediction.probabilities is None else paint_next(prediction.probabilities, plane, SUGGESTIONS)
    prediction.probabilities = None
    prediction.labels = ui.compact_labels(prediction.labels)
    return result, prediction, extras


def legend_text(mode: str) -> str:
    """The label legend of ``mode``, one convention per line."""
    return "<br>".join(LEGEND[mode].split("; "))


class TrainWidget(Container):
    """Dock widget: pick images and their painted labels, set the model and budget, train.

    While it trains, a plot shows the loss and validation Dice and (with live
    preview on) the Labels layer ``"<image> preview"`` follows the model. On
    finish the best model's prediction appears as ``"<image> prediction"``;
    it can be corrected (``"<image> corrected"``) and trained on again with
    Continue, which starts from the last run's model and optimizer state.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self.last_checkpoint: Path | None = None
        self.last_result: TrainResult | None = None
        self.last_prediction = None
        self._extras = None  # (uncertainty map, suggestion rows) of the last prediction
        self._continue_from: Path | None = None
        self._slot = JobSlot()
        self._auto_path = default_model_path()
        self._val_dice: float | None = None
        self._offsets = (0, 0)  # (steps, epochs) of earlier runs shown in the plot
        self._last = (0, 0)  # (step, epoch) last drawn
        self._target = None  # (image layer, axes, shown plane, spatial shape, labels layer) of the running job

        self._image = ui.layer_picker(napari_viewer, Image, "image", "the image to learn from")
        self._labels_combo = ui.layer_picker(napari_viewer, Labels, "labels", "painted labels, same shape as the image")
        self._mode = ui.choice_combo("label mode", LABEL_MODES, "scribbles",
                                     "how to read the labels layer (see the legend below)")
        self._legend = ui.wrapped_label(legend_text("scribbles"), small=True)
        self._pairs = ui.PairList(napari_viewer)
        self._matching = CheckBox(text="also all '<image> scribbles/labels/corrected' pairs", value=False,
                                  tooltip="add every Labels layer named after an image layer plus one of: "
                                          + ", ".join(ui.PAIR_SUFFIXES) + " (model outputs are skipped)")
        self._init = ui.file_picker("start from", "r", "*.pt",
                                    tooltip="fine-tune a saved model (its architecture and classes are kept); "
                                            "empty = a new model")
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
        self._patch = LineEdit(label="patch", value="auto",
                               tooltip="pixels, a multiple of 32; auto: dense labels 128 on the CPU, 256 on a GPU; "
                                       "scribbles 64 / 128")
        self._batch = LineEdit(label="batch size", value="auto", tooltip="auto: 8 for dense labels, 32 for scribbles")
        self._lr = LineEdit(label="learning rate", value="auto",
                            tooltip="auto: 3e-3 from scratch, 1e-3 fine-tuning, 1e-4 for Mask R-CNN")
        self._weights = ui.choice_combo("class weights", ("none", "balanced"), "none",
                                        "balanced: rare classes weigh more in the loss")
        self._gamma = FloatSpinBox(label="focal gamma", value=0.0, min=0.0, max=5.0, step=0.5,
                                   tooltip="0 = plain cross-entropy; 2 = focus on hard pixels (focal loss)")
        self._device = ui.choice_combo("device", DEVICES, "auto")
        self._preview = SpinBox(label="live preview every", value=10, min=0, max=10000,
                                tooltip="steps between live predictions of the plane on screen; 0 = off")
        self._save_to = ui.file_picker("save to", "w", "*.pt", value=self._auto_path,
                                       tooltip="the best model is written here; empty = keep it in memory only")
        self._read_255 = CheckBox(text="read 255 as foreground", value=False)

        self._controls = ui.RunControls("Train", self._on_train, self._on_stop)
        self._continue = PushButton(text="Continue", enabled=False,
                                    tooltip="train more, starting from the last run's model and optimizer state")
        self._controls.buttons.insert(1, self._continue)
        self.plot = TrainingPlot()
        self._correct = PushButton(text="Correct prediction", enabled=False,
                                   tooltip="copy the prediction into an editable '<image> corrected' layer")
        self._show_uncertainty = PushButton(text="Uncertainty map", enabled=False,
                                            tooltip="where the model is unsure, and boxes where to paint next")
        self._use_in_predict = PushButton(text="Predict with this model", enabled=False)

        data = ui.form("", [self._image, self._labels_combo, self._mode], [self._legend, self._pairs, self._matching])
        model = ui.form("", [self._init, self._family, self._arch, self._encoder, self._pretrained])
        budget = ui.form("", [self._epochs, self._time, self._steps, self._patch, self._batch, self._lr,
                              self._weights, self._gamma, self._device, self._preview, self._save_to],
                         [self._read_255])
        ui.align_labels([data, model, budget])
        self._tabs = ui.Tabs([("Data", data), ("Model", model), ("Training", budget)])
        self._inputs = [data, model, budget]
        self._after = [self._correct, self._show_uncertainty, self._use_in_predict]
        super().__init__(widgets=[self._tabs, self._controls, ui.holder(self.plot),
                                  ui.button_row(self._correct, self._show_uncertainty), self._use_in_predict],
                         labels=False)

        self._mode.changed.connect(self._on_mode)
        self._family.changed.connect(self._on_family)
        self._init.changed.connect(self._on_init)
        self._continue.changed.connect(lambda *_: self._run(continuing=True))
        self._correct.changed.connect(lambda *_: self._controls.attempt(self.correct_prediction))
        self._show_uncertainty.changed.connect(lambda *_: self._controls.attempt(self.show_uncertainty))
        self._use_in_predict.changed.connect(self._open_in_predict)
        self.reset_choices()
        stop_on_destroy(self.native, self._slot)
        ui.warm_up()

    # ------------------------------------------------------------------ state and settings
    @property
    def busy(self) -> bool:
        return self._slot.busy

    def config(self, init: Path | None = None) -> TrainConfig:
        """The TrainConfig the controls describe (raises InputError on a bad value).

        ``init``: the checkpoint to start from; default the "start from" field.
        """
        lr = _auto_number(self._lr.value, float, "learning rate", "1e-3")
        patch = _auto_number(self._patch.value, int, "patch", "128")
        batch = _auto_number(self._batch.value, int, "batch size", "8")
        save_to = ui.path_or_none(self._save_to)
        init = init or ui.path_or_none(self._init)
        if init is not None and not init.is_file():
            raise InputError(f"start-from model {init} does not exist")
        return TrainConfig(
            label_mode=self._mode.value, family=self._family.value, arch=self._arch.value,
            encoder=self._encoder.native.currentText().strip() or DEFAULT_ENCODER,
            pretrained=None if self._pretrained.value == "none" else self._pretrained.value,
            epochs=self._epochs.value or None, time_limit=float(self._time.value) or None,
            steps_per_epoch=self._steps.value, patch=patch, batch_size=batch,
            lr=lr, class_weights=self._weights.value, focal_gamma=float(self._gamma.value),
            device=self._device.value, model_out=str(save_to) if save_to else None,
            init=str(init) if init else None, preview_every=self._preview.value,
            read_255_as_foreground=self._read_255.value,
        ).check()

    def pairs(self) -> list[tuple]:
        """The (image layer, labels layer) pairs to train on; the picked pair first."""
        pairs = [(self._image.value, self._labels_combo.value), *self._pairs.pairs()]
        for i, (image, labels) in enumerate(pairs):
            if image is None:
                raise InputError("no image layer: open an image first" if i == 0 else
                                 f"pair {i + 1} has no image: choose one or remove the row")
            if labels is None:
                raise InputError("no labels layer: add a Labels layer and paint on it" if i == 0 else
                                 f"pair {i + 1} has no labels: choose a layer or remove the row")
        if self._matching.value:
            pairs += ui.matching_pairs(self._viewer)
        unique = []
        for pair in pairs:
            if not any(pair[0] is a and pair[1] is b for a, b in unique):
                unique.append(pair)
        return unique

    def prepare_retraining(self, image, corrected, checkpoint: Path | None, mode: str) -> None:
        """Set up a round on ``corrected`` labels of ``image``, starting from ``checkpoint``."""
        self.reset_choices()
        self._image.value = image
        self._labels_combo.value = corrected
        self._mode.value = mode
        if checkpoint is not None:
            self._init.value = Path(checkpoint)
        self._tabs.show_page(0)
        self._controls.say(f"paint the fixes in '{corrected.name}', then press Train to fine-tune "
                           + (Path(checkpoint).name if checkpoint else "a new model"))

    # ------------------------------------------------------------------ callbacks
    def _on_mode(self, mode: str) -> None:
        self._legend.value = legend_text(mode)

    def _on_family(self, family: str) -> None:
        self._arch.choices = ARCHS[family]
        self._arch.value = DEFAULT_ARCH[family]
        self._encoder.enabled = family == "unet" and ui.path_or_none(self._init) is None
        if family == "maskrcnn":
            self._mode.value = "instances"

    def _on_init(self, *_args) -> None:
        # a start model brings its own architecture
        fresh = ui.path_or_none(self._init) is None
        ui.set_enabled([self._family, self._arch, self._pretrained], fresh)
        self._encoder.enabled = fresh and self._family.value == "unet"

    def _on_train(self) -> None:
        self._run(continuing=False)

    def _run(self, continuing: bool) -> None:
        self._controls.attempt(lambda: self._start(continuing))

    def _start(self, continuing: bool) -> None:
        if continuing and (self._continue_from is None or not self._continue_from.is_file()):
            raise InputError("nothing to continue: the last run's model file is gone (train first)")
        pairs = self.pairs()
        config = self.config(init=self._continue_from if continuing else None)
        if config.model_out and Path(config.model_out).parent == MODELS_DIR:
            MODELS_DIR.mkdir(parents=True, exist_ok=True)
        # copy on the main thread: the user may keep painting while the worker trains
        data = []
        for image_layer, labels_layer in pairs:
            image, axes = _layers.image_from_layer(image_layer)
            data.append((image, axes, _layers.labels_from_layer(labels_layer)))
        image, axes, _ = data[0]
        plane = _layers.current_plane(self._viewer, pairs[0][0], axes)
        preview_plane = (image[plane] if plane else image) if config.preview_every else None
        spatial = _layers.spatial_shape(image, axes)
        self._target = (pairs[0][0], axes, plane, spatial, pairs[0][1])
        if config.preview_every:  # created now, in answer to the click, so that previews only update it
            _layers.show_plane(self._viewer, np.zeros(spatial[-2:], np.uint16), self._name("preview"), spatial,
                               plane, like=pairs[0][0], below=pairs[0][1], reset=True)
        if continuing:
            self._offsets = self._last
            self.plot.mark(self._last[0])
        else:
            self._offsets = self._last = (0, 0)
            self.plot.clear()
        # target classes: instances learn background, inside and edge; other modes their class ids
        self.plot.class_names = ("bg", "inside", "edge") if config.label_mode == "instances" else ("bg",)
        self._val_dice = None
        self._controls.set_fraction(0)
        self._controls.say("starting..." if len(pairs) == 1 else f"starting on {len(pairs)} image/labels pairs...")
        self._set_busy(True)
        self._slot.start(lambda stop: train_then_predict(data, config, preview_plane, plane, stop),
                         on_event=self._on_event, on_result=self._on_result,
                         on_error=lambda exc: self._controls.say(error_text(exc)),
                         on_done=lambda: self._set_busy(False))

    def _on_stop(self) -> None:
        self._slot.stop()
        self._controls.say("stopping after the current step...")

    def _set_busy(self, busy: bool) -> None:
        ui.set_enabled(self._inputs, not busy)
        self._controls.set_busy(busy)
        self._continue.enabled = not busy and self._continue_from is not None
        self._correct.enabled = not busy and self.last_prediction is not None
        self._show_uncertainty.enabled = not busy and self._extras is not None
        self._use_in_predict.enabled = not busy and self.last_checkpoint is not None

    def _name(self, what: str) -> str:
        return f"{self._target[0].name} {what}"

    def _on_event(self, event) -> None:
        say = self._controls.say
        steps, epochs = self._offsets
        if isinstance(event, TrainStep):
            self._last = (steps + event.step, self._last[1])
            self.plot.add_loss(steps + event.step, event.loss)
            of = f"/{event.total_steps}" if event.total_steps else ""
            dice = f" | val Dice {self._val_dice:.3f}" if self._val_dice is not None else ""
            self._controls.report(event.fraction, f"epoch {event.epoch} | step {event.step}{of} | "
                                                  f"loss {event.loss:.4f}{dice} | {event.elapsed:.0f} s")
        elif isinstance(event, EpochEnd):
            self._val_dice = event.val_dice
            self._last = (self._last[0], epochs + event.epoch)
            self.plot.add_dice(self._last[0], epochs + event.epoch, event.val_dice, event.per_class_dice)
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = Path(event.path)
        elif isinstance(event, Preview):
            layer, _axes, plane, spatial, labels_layer = self._target
            _layers.show_plane(self._viewer, event.labels, self._name("preview"), spatial, plane, like=layer,
                               below=labels_layer)
        elif isinstance(event, TileDone):
            self._controls.report(event.fraction, f"predicting: tile {event.tile}/{event.tiles}, "
                                                  f"plane {event.plane + 1}/{event.planes}")
        elif isinstance(event, Message):
            say(event.text)

    def _on_result(self, value) -> None:
        result, prediction, extras = value
        self.last_result = result
        self._continue_from = None  # Continue follows the latest run only
        if result.path:
            self.last_checkpoint = Path(result.path)
            last = Path(result.path).with_suffix(".last.pt")
            self._continue_from = last if last.is_file() else Path(result.path)
        layer = self._target[0]
        if prediction is not None and layer in self._viewer.layers:
            _layers.promote_preview(self._viewer, prediction.labels, self._name("preview"), self._name("prediction"),
                                    like=layer)
            self.last_prediction, self._extras = prediction, extras
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

    # ------------------------------------------------------------------ after training
    def correct_prediction(self):
        """Copy the last prediction into the editable Labels layer ``"<image> corrected"`` and pick it."""
        layer = self._target[0] if self._target else None
        if self.last_prediction is None or layer not in self._viewer.layers:
            raise InputError("no prediction to correct: train first (the image layer must still be open)")
        mode = self._mode.value
        labels = ui.correction_labels(self.last_prediction.labels, self.last_prediction.kind, mode)
        corrected = _layers.show_correction(self._viewer, labels, self._name("corrected"), mode, like=layer)
        self._labels_combo.reset_choices()
        self._labels_combo.value = corrected
        self._controls.say(f"paint the fixes in '{corrected.name}', then press Continue to train on them "
                           "from this model")
        return corrected

    def show_uncertainty(self) -> None:
        """Add ``"<image> uncertainty"`` (entropy, 0..1) and ``"<image> paint next"`` boxes."""
        layer = self._target[0] if self._target else None
        if self._extras is None or layer not in self._viewer.layers:
            raise InputError("no uncertainty to show: train first (the image layer must still be open)")
        entropy, rows = self._extras
        _layers.show_uncertainty(self._viewer, entropy, self._name("uncertainty"), like=layer)
        _layers.show_regions(self._viewer, rows, self._name("paint next"), like=layer, ndim=entropy.ndim)
        self._controls.say(f"bright = unsure; the {len(rows)} numbered boxes are the best places to paint next")

    def _open_in_predict(self, *_args) -> None:
        if self.last_checkpoint is None:
            return
        _dock, widget = self._viewer.window.add_plugin_dock_widget("napari-seglab", "Predict")
        widget.set_checkpoint(self.last_checkpoint)
        if self._target is not None and self._target[0] in self._viewer.layers:
            widget.set_image(self._target[0])
