"""TrainWidget: train on painted labels, watch it learn, continue, correct and retrain."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels

from .. import _layers
from ..core.data import median_diameter, scale_for
from ..core.device import DEVICES
from ..core.errors import InputError
from ..core.events import CheckpointSaved, EpochEnd, Message, Preview, TileDone, TrainStep
from ..core.labels import LABEL_MODES, is_instance_mode, object_instances
from ..core.models import (
    DEFAULT_ARCH,
    FAMILIES,
    FCN_ARCHS,
    MASKRCNN_ARCHS,
    PRESETS,
    SMP_ARCHS,
)
from ..core.train import DEFAULT_TIME_LIMIT, TrainConfig, TrainResult, default_instance_head
from . import _common as ui
from . import _layout
from ._colors import apply_colors, legend_html, prediction_kind
from ._models import (
    MODELS_DIR,
    best_dice,
    default_model_path,
    drop_state,
    folder_note,
    state_path,
    unused_path,
)
from ._plot import TrainingPlot
from ._train_job import TrainOutcome, auto_number, train_then_predict
from ._worker import JobSlot, error_text, stop_on_destroy

if TYPE_CHECKING:
    import napari

ARCHS = {"unet": SMP_ARCHS, "fcn": FCN_ARCHS, "maskrcnn": MASKRCNN_ARCHS}
#: the diameter estimate runs on the GUI thread at each labels change: only on planes this small
MAX_ESTIMATE_PIXELS = 16e6
#: the encoder entry that lets the preset decide
FROM_PRESET = "(preset)"
COMMON_ENCODERS = (FROM_PRESET, "resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b3",
                   "mobilenet_v2", "densenet121", "vgg16_bn", "timm-regnety_004")
__all__ = ["MODELS_DIR", "TrainWidget", "default_model_path", "train_then_predict"]


class TrainWidget(Container):
    """Dock widget: pick images and their painted labels, set the model and budget, train.

    While it trains, a plot shows the loss and validation Dice and (with live
    preview on) the Labels layer ``"<image> preview"`` follows the model. On
    finish the kept model's prediction appears as ``"<image> prediction"``;
    it can be corrected (``"<image> corrected"``) and trained on again with
    Continue, which starts from the last run's model and optimizer state. A
    continued run that ends worse than the model it started from does not
    replace it (:attr:`last_checkpoint` stays the better model).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        #: the model "Predict with this model" uses: the latest run's, unless a continued run ended worse
        self.last_checkpoint: Path | None = None
        self.last_result: TrainResult | None = None
        self.last_prediction = None
        self._kept_dice: float | None = None  # validation Dice of last_checkpoint
        self._newer: Path | None = None  # a continued run's model that ended worse (kept aside)
        self._state_ref: list[Path | None] = [None]  # the latest run's .last.pt (deleted once Continue cannot use it)
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
        self._legend = ui.wrapped_label(legend_html("scribbles"), small=True)
        self._pairs = ui.PairList(napari_viewer)
        self._matching = CheckBox(text="also all '<image> scribbles' pairs", value=False,
                                  tooltip="also train on every Labels layer named '<image name> <suffix>', the "
                                          "suffix one of: " + ", ".join(ui.PAIR_SUFFIXES)
                                          + " (e.g. 'cells corrected'; model outputs are skipped)")
        self._init = ui.file_picker("start from", "r", "*.pt",
                                    tooltip="fine-tune a saved model (its architecture and classes are kept); "
                                            "empty = a new model")
        self._family = ui.choice_combo("family", FAMILIES, "unet")
        self._preset = ui.choice_combo(
            "preset", ("auto", *PRESETS), "auto",
            "auto: 'fast' on a CPU, 'accurate' on a GPU. " + "; ".join(
                f"{p.name}: {p.summary} (about {p.cpu_step_s:.2f} s per step on a 2-core laptop CPU)"
                for p in PRESETS.values()))
        self._head = ui.choice_combo(
            "instance head", ("auto", "boundary", "flows", "distance"), "auto",
            "how objects are separated (instances / objects modes, unet and fcn): auto = flows for instances, "
            "boundary for partially painted objects (measured best); boundary = background / "
            "interior / boundary classes; flows = foreground + flows towards each object's centre; distance = "
            "foreground + distance to the object's boundary")
        self._head.enabled = False
        self._diameter = LineEdit(label="object diameter", value="auto",
                                  tooltip="typical object diameter in pixels; images are resampled so objects "
                                          "reach the size the network resolves best. auto: measured on the "
                                          "painted objects (instances / objects modes), else no resampling")
        self._diameter_note = ui.wrapped_label("", small=True)
        self._arch = ui.choice_combo("architecture", SMP_ARCHS, DEFAULT_ARCH["unet"])
        self._encoder = ui.choice_combo("encoder", COMMON_ENCODERS, FROM_PRESET,
                                        "encoder of the U-Net family; (preset): the preset's; or type any "
                                        "segmentation-models-pytorch name")
        self._encoder.native.setEditable(True)
        self._pretrained = ui.choice_combo("pretrained", ("none", "auto"), "none",
                                           "auto: use stock weights when already on disk (nothing is downloaded)")
        self._epochs = SpinBox(label="epochs", value=0, min=0, max=100000,
                               tooltip="0 = train for the time budget only")
        self._time = SpinBox(label="time budget (s)", value=int(DEFAULT_TIME_LIMIT), min=0, max=7 * 24 * 3600,
                             step=30, tooltip="set-up and saving included; 0 = no limit; training stops at the "
                                              "epochs or the budget, whichever comes first")
        self._steps = SpinBox(label="steps per epoch", value=25, min=1, max=100000,
                              tooltip="the validation Dice is measured after each epoch")
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
                                       tooltip="the best model is written here (about 100 MB for a resnet34 "
                                               "U-Net; Continue's optimizer state, M.last.pt, about 3x more "
                                               "until the next run); empty = keep it in memory only")
        self._folder = ui.wrapped_label("", small=True)
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
        self._use_in_predict = PushButton(text="Predict with this model", enabled=False,
                                          tooltip="open the Predict dock with the model kept by the last run")
        self._use_newer = PushButton(text="Use the newer model", visible=False,
                                     tooltip="the last (continued) run ended worse than its start model, which "
                                             "is kept; use the newer one anyway")

        data = ui.form("", [self._image, self._labels_combo, self._mode], [self._legend, self._pairs, self._matching])
        model = ui.form("", [self._init, self._family, self._preset, self._arch, self._encoder, self._pretrained,
                             self._head, self._diameter], [self._diameter_note])
        budget = ui.form("", [self._epochs, self._time, self._steps, self._patch, self._batch, self._lr,
                              self._weights, self._gamma, self._device, self._preview, self._save_to],
                         [self._folder, self._read_255])
        ui.align_labels([data, model, budget])
        self._tabs = ui.Tabs([("Data", data), ("Model", model), ("Training", budget)])
        self._inputs = [data, model, budget]
        self._after = [self._correct, self._show_uncertainty, self._use_in_predict]
        body = _layout.dock_body([self._tabs, self._controls, ui.holder(self.plot),
                                  ui.button_row(self._correct, self._show_uncertainty),
                                  ui.button_row(self._use_in_predict, self._use_newer)], stretch=False)
        super().__init__(widgets=[body], labels=False)
        self.margins = (0, 0, 0, 0)

        self._mode.changed.connect(self._on_mode)
        self._labels_combo.changed.connect(lambda *_: self._color_labels())
        self._labels_combo.changed.connect(lambda *_: self._estimate_diameter())
        self._diameter.changed.connect(lambda *_: self._estimate_diameter())
        self._family.changed.connect(self._on_family)
        self._init.changed.connect(self._on_init)
        self._save_to.changed.connect(lambda *_: self._show_folder())
        self._continue.changed.connect(lambda *_: self._run(continuing=True))
        self._correct.changed.connect(lambda *_: self._controls.attempt(self.correct_prediction))
        self._show_uncertainty.changed.connect(lambda *_: self._controls.attempt(self.show_uncertainty))
        self._use_in_predict.changed.connect(self._open_in_predict)
        self._use_newer.changed.connect(lambda *_: self.use_newer_model())
        self.reset_choices()
        self._color_labels()
        self._estimate_diameter()
        self._show_folder()
        stop_on_destroy(self.native, self._slot)
        # Continue cannot outlive the dock: its optimizer state (3x the model) goes with it
        self.native.destroyed.connect(lambda *_args, ref=self._state_ref: drop_state(ref[0]))
        _layout.on_undocked(self, lambda ref=self._state_ref: drop_state(ref[0]))
        _layout.tabify_when_docked(self)
        ui.warm_up()

    # ------------------------------------------------------------------ state and settings
    @property
    def busy(self) -> bool:
        return self._slot.busy

    def config(self, init: Path | None = None) -> TrainConfig:
        """The TrainConfig the controls describe (raises InputError on a bad value).

        ``init``: the checkpoint to start from; default the "start from" field.
        """
        lr = auto_number(self._lr.value, float, "learning rate", "1e-3")
        patch = auto_number(self._patch.value, int, "patch", "128")
        batch = auto_number(self._batch.value, int, "batch size", "8")
        diameter = auto_number(self._diameter.value, float, "object diameter", "20")
        if diameter is not None and not 1 <= diameter <= 10000:
            raise InputError(f"object diameter must be from 1 to 10000 pixels; got {diameter:g}")
        if not self._epochs.value and not self._time.value:
            raise InputError("give a number of epochs or a time limit (both are 0)")
        encoder = self._encoder.native.currentText().strip()
        save_to = ui.path_or_none(self._save_to)
        init = init or ui.path_or_none(self._init)
        if init is not None and not init.is_file():
            raise InputError(f"start-from model {init} does not exist")
        return TrainConfig(
            label_mode=self._mode.value, family=self._family.value, arch=self._arch.value,
            encoder=None if encoder in ("", FROM_PRESET) else encoder,
            preset=None if self._preset.value == "auto" else self._preset.value,
            scale=scale_for(diameter) if diameter is not None else None,
            pretrained=None if self._pretrained.value == "none" else self._pretrained.value,
            epochs=self._epochs.value or None, time_limit=float(self._time.value) or None,
            steps_per_epoch=self._steps.value, patch=patch, batch_size=batch,
            lr=lr, class_weights=self._weights.value, focal_gamma=float(self._gamma.value),
            device=self._device.value, model_out=str(save_to) if save_to else None,
            init=str(init) if init else None, preview_every=self._preview.value,
            read_255_as_foreground=self._read_255.value,
            instance_head=self._head.value if self._head.enabled and self._head.value != "auto" else None,
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
        self._legend.value = legend_html(mode)
        self._update_head()
        self._color_labels()
        self._estimate_diameter()

    def _estimate_diameter(self) -> None:
        """Show the object diameter measured on the painted objects and the resampling it implies."""
        layer, mode = self._labels_combo.value, self._mode.value
        typed = self._diameter.value.strip().lower()
        if typed not in ("", "auto"):
            try:
                d = float(typed)
            except ValueError:
                self._diameter_note.value = "type a number of pixels, or auto"
                return
            self._diameter_note.value = f"resampling by {scale_for(d):g}"
            return
        if layer is None or not is_instance_mode(mode) or np.asarray(layer.data).size > MAX_ESTIMATE_PIXELS:
            self._diameter_note.value = "auto: no resampling (paint whole objects in the instances or objects " \
                                        "mode to measure them)"
            return
        objects = object_instances(np.asarray(layer.data), mode)
        d = median_diameter([objects]) if objects is not None and objects.ndim == 2 else None
        self._diameter_note.value = "auto: no object painted yet" if d is None else \
            f"auto: painted objects measure {d:.0f} px; resampling by {scale_for(d):g}"

    def _color_labels(self) -> None:
        """Give the picked labels layer the class colours of its mode (unless the user chose colours)."""
        layer = self._labels_combo.value
        if layer is not None:
            apply_colors(layer, self._mode.value, force=False)

    def _show_folder(self) -> None:
        path = ui.path_or_none(self._save_to)
        self._folder.value = folder_note(path.parent if path else MODELS_DIR)
        self._save_to.line_edit.tooltip = str(path) if path else "empty: the model is kept in memory only"
        self._save_to.line_edit.native.setCursorPosition(0)  # show where it goes, not just the end of the name

    def _update_head(self) -> None:
        """The instance head applies to fresh unet / fcn models trained on instances or objects labels."""
        self._head.enabled = (is_instance_mode(self._mode.value) and self._family.value != "maskrcnn"
                              and ui.path_or_none(self._init) is None)

    def _on_family(self, family: str) -> None:
        self._arch.choices = ARCHS[family]
        self._arch.value = DEFAULT_ARCH[family]
        self._encoder.enabled = family == "unet" and ui.path_or_none(self._init) is None
        self._preset.enabled = self._encoder.enabled
        if family == "maskrcnn":
            self._mode.value = "instances"
        self._update_head()

    def _on_init(self, *_args) -> None:
        # a start model brings its own architecture
        fresh = ui.path_or_none(self._init) is None
        ui.set_enabled([self._family, self._arch, self._pretrained], fresh)
        self._encoder.enabled = fresh and self._family.value == "unet"
        self._preset.enabled = self._encoder.enabled
        self._update_head()

    def _on_train(self) -> None:
        self._run(continuing=False)

    def _run(self, continuing: bool) -> None:
        self._controls.attempt(lambda: self._start(continuing))

    def _start(self, continuing: bool) -> None:
        if continuing and (self._continue_from is None or not self._continue_from.is_file()):
            raise InputError("nothing to continue: the last run's model file is gone (train first)")
        pairs = self.pairs()
        config = self.config(init=self._continue_from if continuing else None)
        start = (self.last_checkpoint, self._kept_dice) if continuing and self.last_checkpoint else None
        if config.model_out:
            # a run never writes over the model it starts from (a continued run may end worse)
            out = unused_path(Path(config.model_out), {p for p in (self.last_checkpoint, self._continue_from) if p}) \
                if continuing else Path(config.model_out)
            config.model_out = str(out)
            if out.parent == MODELS_DIR:
                MODELS_DIR.mkdir(parents=True, exist_ok=True)
        # copy on the main thread: the user may keep painting while the worker trains
        data = []
        for image_layer, labels_layer in pairs:
            image, axes = _layers.image_from_layer(image_layer)
            data.append((image, axes, _layers.labels_from_layer(labels_layer)))
            apply_colors(labels_layer, config.label_mode, force=False)
        image, axes, _ = data[0]
        plane = _layers.current_plane(self._viewer, pairs[0][0], axes)
        preview_plane = (image[plane] if plane else image) if config.preview_every else None
        spatial = _layers.spatial_shape(image, axes)
        self._target = (pairs[0][0], axes, plane, spatial, pairs[0][1])
        if config.preview_every:  # created now, in answer to the click, so that previews only update it
            _layers.show_plane(self._viewer, np.zeros(spatial[-2:], np.uint16), self._name("preview"), spatial,
                               plane, like=pairs[0][0], below=pairs[0][1], reset=True,
                               colors=prediction_kind(config.label_mode, "semantic"))
        if continuing:
            self._offsets = self._last
            self.plot.mark(self._last[0])  # a new run: its Dice is measured on its own held-out pixels
        else:
            self._offsets = self._last = (0, 0)
            self.plot.clear()
        # target classes: instances learn background, inside and edge; other modes their class ids
        head = config.instance_head or default_instance_head(config.label_mode, config.family)
        if config.init:
            head = None  # the start model's head: the plot learns its classes from the first Dice
        self.plot.class_names = (("bg", "object") if head not in (None, "boundary")
                                 else ("bg", "inside", "edge")) if is_instance_mode(config.label_mode) else ("bg",)
        self.plot.dice_every = config.steps_per_epoch if config.epochs else None  # time budgets validate by the clock
        self._val_dice = None
        self._controls.set_fraction(0)
        self._controls.say("starting..." if len(pairs) == 1 else f"starting on {len(pairs)} image/labels pairs...")
        self._set_busy(True)
        names = [(image_layer.name, labels_layer.name) for image_layer, labels_layer in pairs]
        self._slot.start(lambda stop: train_then_predict(data, config, preview_plane, plane, stop, names=names,
                                                         start=start),
                         on_event=self._on_event, on_result=self._on_result, on_error=self._on_error,
                         on_done=lambda: self._set_busy(False))

    def _on_error(self, exc: BaseException) -> None:
        self._controls.say(error_text(exc))
        self._drop_preview()

    def _drop_preview(self) -> None:
        """Remove the live-preview layer of the run that just ended: empty or stale, it would mislead."""
        if self._target is not None:
            _layers.remove_layer(self._viewer, self._name("preview"))

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
        self._use_newer.enabled = not busy

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
            rate = f" | {event.step / event.elapsed:.1f} steps/s" if event.elapsed > 0 else ""
            left = f" | {max(0.0, event.time_limit - event.elapsed):.0f} s left" if event.time_limit else \
                f" | {event.elapsed:.0f} s"
            self._controls.report(event.fraction, f"step {event.step}{of} | loss {event.loss:.4f}{dice}"
                                                  f"{rate}{left}")
        elif isinstance(event, EpochEnd):
            self._val_dice = event.val_dice
            self._last = (self._last[0], epochs + event.epoch)
            self.plot.add_dice(self._last[0], epochs + event.epoch, event.val_dice, event.per_class_dice)
        elif isinstance(event, CheckpointSaved):
            pass  # the model to predict with is decided when the run ends (a continued run may end worse)
        elif isinstance(event, Preview):
            layer, _axes, plane, spatial, labels_layer = self._target
            _layers.show_plane(self._viewer, event.labels, self._name("preview"), spatial, plane, like=layer,
                               below=labels_layer)
        elif isinstance(event, TileDone):
            self._controls.report(event.fraction, f"predicting: tile {event.tile}/{event.tiles}, "
                                                  f"plane {event.plane + 1}/{event.planes}")
        elif isinstance(event, Message):
            say(event.text)

    def _on_result(self, outcome: TrainOutcome) -> None:
        result, prediction, verdict = outcome.result, outcome.prediction, outcome.verdict
        self.last_result = result
        new = Path(result.path) if result.path else None
        state = state_path(new) if new else None
        previous_state, self._state_ref[0] = self._state_ref[0], state if state and state.is_file() else None
        if previous_state != self._state_ref[0]:
            drop_state(previous_state)  # Continue follows this run now
        dice = best_dice(result.checkpoint.meta)
        if verdict.keep_new:
            self.last_checkpoint, self._kept_dice, self._newer = new, dice, None
            self._continue_from = self._state_ref[0] or new  # None: kept in memory only, nothing to continue
        else:  # keep the start model: Predict and Continue go on from it
            self._newer = new
            self._continue_from = self.last_checkpoint
        self._use_newer.visible = self._newer is not None
        layer = self._target[0]
        if prediction is not None and layer in self._viewer.layers:
            _layers.promote_preview(self._viewer, prediction.labels, self._name("preview"), self._name("prediction"),
                                    like=layer, colors=prediction_kind(self._mode.value, prediction.kind))
            self.last_prediction, self._extras = prediction, outcome.extras
        else:
            self._drop_preview()
        text = (f"{'stopped' if result.stopped else 'done'}: {result.steps} steps in {result.seconds:.0f} s"
                + (f", val Dice {dice:.3f}" if dice is not None else "")
                + (f"; model saved to {result.path}" if result.path else "; model kept in memory only"))
        if not verdict.keep_new:
            text += "; " + verdict.text()
        self._controls.set_fraction(1.0)
        self._controls.say(text)
        # the next run should not overwrite this model unless the user chose the file
        if ui.path_or_none(self._save_to) == self._auto_path:
            self._auto_path = unused_path(default_model_path(), {new} if new else set())
            self._save_to.value = self._auto_path
        self._show_folder()

    def use_newer_model(self) -> None:
        """Use the last continued run's model after all (it ended worse than its start model)."""
        if self._newer is None or not self._newer.is_file():
            self._use_newer.visible = False
            return
        self.last_checkpoint, self._newer = self._newer, None
        self._kept_dice = best_dice(self.last_result.checkpoint.meta) if self.last_result else None
        state = self._state_ref[0]
        self._continue_from = state if state is not None and state.is_file() else self.last_checkpoint
        self._use_newer.visible = False
        self._controls.say(f"using the newer model {self.last_checkpoint.name} (the prediction layer still "
                           "shows the earlier model's: predict again to see this one)")

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
        widget = _layout.open_dock(self._viewer, "Predict")
        widget.set_checkpoint(self.last_checkpoint)
        if self._target is not None and self._target[0] in self._viewer.layers:
            widget.set_image(self._target[0])
