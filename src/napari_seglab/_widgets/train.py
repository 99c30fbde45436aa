"""TrainWidget: train on painted labels, watch it learn, continue, correct and retrain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, PushButton

from .. import _layers
from .._colors import apply_colors, prediction_kind
from ..core.device import pick_device
from ..core.errors import InputError
from ..core.events import CheckpointSaved, EpochEnd, Message, Preview, TileDone, TrainStep
from ..core.labels import get_mode
from ..core.models import get_family
from ..core.train import ResolvedTrainConfig, TrainResult
from . import _common as ui
from . import _layout, _lazy
from ._assist import AssistPanel
from ._export_package import PackageExport
from ._models import (
    MODELS_DIR,
    best_dice,
    default_model_path,
    drop_state,
    score_name,
    state_path,
    unused_path,
)
from ._plot import TrainingPlot
from ._train_job import TrainOutcome, area_from_shapes, shapes_rows, train_then_predict
from ._train_settings import (  # noqa: F401
    ARCHS,
    COMMON_ENCODERS,
    FROM_PRESET,
    MAX_ESTIMATE_PIXELS,
    WHOLE_IMAGE,
    TrainSettings,
)
from ._worker import JobSlot, error_text, stop_on_destroy

if TYPE_CHECKING:
    import napari

__all__ = ["MODELS_DIR", "TrainWidget", "default_model_path", "train_then_predict"]


def crop_text(crop: tuple[slice, slice], margin: int) -> str:
    """Says which part of a large layer a run trains on."""
    ys, xs = crop
    return (f"(large layer: training on its painted area, {ys.stop - ys.start}x{xs.stop - xs.start} px at "
            f"y {ys.start}, x {xs.start}, with a {margin}px margin)")


class TrainWidget(TrainSettings, Container):
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
        self._crop: _lazy.Placement | None = None  # where the trained crop of a large first image lies

        forms = self._build_settings(napari_viewer, self._auto_path)
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
        self.export = PackageExport(self._slot, lambda text: self._controls.say(text), self._set_busy)
        self._use_newer = PushButton(text="Use the newer model", visible=False,
                                     tooltip="the last (continued) run ended worse than its start model, which "
                                             "is kept; use the newer one anyway")

        #: model-assisted annotation: click to add a predicted object, accept the confident ones
        self.assist = AssistPanel(napari_viewer, self._controls.say)

        ui.align_labels(forms)
        self._tabs = ui.Tabs(list(zip(("Data", "Model", "Training"), forms, strict=True)))
        self._inputs = forms
        self._after = [self._correct, self._show_uncertainty, self._use_in_predict]
        body = _layout.dock_body([self._tabs, self._controls, ui.holder(self.plot),
                                  ui.button_row(self._correct, self._show_uncertainty),
                                  ui.button_row(self._use_in_predict, self._use_newer),
                                  ui.button_row(self.export.button), self.assist],
                                 stretch=False)
        super().__init__(widgets=[body], labels=False)
        self.margins = (0, 0, 0, 0)

        self._connect_settings()
        self._continue.changed.connect(lambda *_: self._run(continuing=True))
        self._correct.changed.connect(lambda *_: self._controls.attempt(self.correct_prediction))
        self._show_uncertainty.changed.connect(lambda *_: self._controls.attempt(self.show_uncertainty))
        self._use_in_predict.changed.connect(self._open_in_predict)
        self._use_newer.changed.connect(lambda *_: self.use_newer_model())
        self.export.button.changed.connect(lambda *_: self._controls.attempt(self.export_package))
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

    def pairs(self) -> list[tuple]:
        """The (image layer, labels layer) pairs to train on; the picked pair first.

        Box mode: one (image layer, boxes Shapes layer, area Shapes layer or None) triple.
        """
        if self.box_mode:
            image, boxes, area = self._image.value, self._boxes_combo.value, self._area_combo.value
            if image is None:
                raise InputError("no image layer: open an image first")
            if boxes is None:
                raise InputError("no boxes layer: add a Shapes layer and draw a rectangle around each object")
            return [(image, boxes, None if area == WHOLE_IMAGE else area)]
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
    def _on_train(self) -> None:
        self._run(continuing=False)

    def _run(self, continuing: bool) -> None:
        self._controls.attempt(lambda: self._start(continuing))

    def _start(self, continuing: bool) -> None:
        if continuing and (self._continue_from is None or not self._continue_from.is_file()):
            raise InputError("nothing to continue: the last run's model file is gone (train first)")
        pairs = self.pairs()
        config = self._run_config(continuing)
        start = (self.last_checkpoint, self._kept_dice) if continuing and self.last_checkpoint else None
        # copy on the main thread: the user may keep painting while the worker trains
        data, boxes, names, crops = self._copy_data(pairs, config)
        image, axes, _ = data[0]
        self._crop = _lazy.Placement(pairs[0][0], crops[0]) if crops[0] is not None else None
        plane = () if self._crop else _layers.current_plane(self._viewer, pairs[0][0], axes)
        preview_plane = (image[plane] if plane else image) if config.preview_every else None
        spatial = _layers.spatial_shape(image, axes)
        self._target = (pairs[0][0], axes, plane, spatial, pairs[0][1])
        like = self._crop or pairs[0][0]
        if config.preview_every:  # created now, in answer to the click, so that previews only update it
            preview = _layers.show_plane(self._viewer, np.zeros(spatial[-2:], np.uint16), self._name("preview"),
                                         spatial, plane, like=like, below=pairs[0][1], reset=True,
                                         colors=prediction_kind(config.label_mode, "semantic"))
            if self._crop:
                self._crop.apply(preview)
        self._reset_plot(config, continuing)
        self._controls.set_fraction(0)
        opening = "starting..." if len(pairs) == 1 else f"starting on {len(pairs)} image/labels pairs..."
        self._controls.say(f"{opening} {crop_text(crops[0], config.patch)}" if self._crop else opening)
        self._set_busy(True)
        self._slot.start(lambda stop: train_then_predict(data, config, preview_plane, plane, stop, names=names,
                                                         start=start, boxes=boxes),
                         on_event=self._on_event, on_result=self._on_result, on_error=self._on_error,
                         on_done=lambda: self._set_busy(False))

    def _copy_data(self, pairs: list[tuple], config) -> tuple[list[tuple], list[list[dict]] | None, list, list]:
        """(image, axes, labels) copies, box rows (box mode), the layer names and crops of ``pairs``, on the main thread.

        Box mode: the rectangles become rows in the image's pixels (InputError naming the layer for an
        ellipse or a rotated rectangle), the area layer an area mask (None: the whole image).
        A large or lazy 2D image layer (multiscale, dask / zarr, above 4096x4096 px) gives only its
        painted area plus a margin of one patch; its crop is the (ys, xs) read (None: the whole image).
        """
        data, boxes, names, crops = [], [] if self.box_mode else None, [], []
        for image_layer, annotation, *area in pairs:
            if _lazy.wants_blocks(image_layer):
                if boxes is None and _lazy.lazy_image(image_layer) is not None:
                    image, axes, labels, crop = _lazy.training_crop(image_layer, annotation, int(config.patch))
                    data.append((image, axes, labels))
                    crops.append(crop)
                    names.append((image_layer.name, annotation.name))
                    continue
                if not _lazy.fits_whole(image_layer):
                    raise InputError(f"layer {image_layer.name!r} is too large to load whole, and "
                                     + ("box training reads whole images" if boxes is not None else
                                        "only a 2D layer is trained from its painted area"))
            crops.append(None)
            image, axes = _layers.image_from_layer(image_layer)
            if boxes is not None:
                spatial = _layers.spatial_shape(image, axes)
                area_layer = area[0] if area else None
                boxes.append(shapes_rows(annotation, like=image_layer))
                mask = None if area_layer is None else area_from_shapes(area_layer, image_layer, spatial)
                data.append((image, axes, mask))
                names.append((image_layer.name, area_layer.name if area_layer is not None else "whole image",
                              annotation.name))
                continue
            data.append((image, axes, _layers.labels_from_layer(annotation)))
            apply_colors(annotation, config.label_mode, force=False)
            names.append((image_layer.name, annotation.name))
        return data, boxes, names, crops

    def _run_config(self, continuing: bool) -> ResolvedTrainConfig:
        """The run's settings, checked once and resolved for the device; a continued run gets a fresh file."""
        config = self._settings(init=self._continue_from if continuing else None)
        if config.model_out:
            # a run never writes over the model it starts from (a continued run may end worse)
            out = unused_path(Path(config.model_out), {p for p in (self.last_checkpoint, self._continue_from) if p}) \
                if continuing else Path(config.model_out)
            config = replace(config, model_out=str(out))
            if out.parent == MODELS_DIR:
                MODELS_DIR.mkdir(parents=True, exist_ok=True)
        return config.resolve(pick_device(config.device))

    def _reset_plot(self, config: ResolvedTrainConfig, continuing: bool) -> None:
        if continuing:
            self._offsets = self._last
            self.plot.mark(self._last[0])  # a new run: its Dice is measured on its own held-out pixels
        else:
            self._offsets = self._last = (0, 0)
            self.plot.clear()
        # the classes the model learns: instances background, inside and edge (or object); other modes their ids
        mode = get_mode(config.label_mode)
        self.plot.class_names = mode.class_names(3 if mode.instances else 2, config.instance_head or "boundary")
        self.plot.dice_every = config.steps_per_epoch if config.epochs else None  # time budgets validate by the clock
        # a box detector's validation score is its box AP@0.5, drawn where the Dice goes
        score = "box AP@0.5" if mode.name == "boxes" or get_family(config.family).kind.boxes else "Dice"
        self.plot.score_name = score
        self.plot.setToolTip(f"training loss per step (faint: raw, bright: smoothed) and validation {score} per epoch")
        self._val_dice = None

    def _on_error(self, exc: BaseException) -> None:
        self._controls.say(error_text(exc))
        self._drop_preview()

    def _drop_preview(self) -> None:
        """Remove the live-preview layer of the run that just ended: empty or stale, it would mislead."""
        if self._target is not None:
            _layers.remove_layer(self._viewer, self._name("preview"))

    def _on_stop(self) -> None:
        self._controls.stop(self._slot, "the current step")

    def _set_busy(self, busy: bool) -> None:
        self._controls.set_busy(busy, self._inputs)
        self._continue.enabled = not busy and self._continue_from is not None
        self._correct.enabled = not busy and self.last_prediction is not None
        self._show_uncertainty.enabled = not busy and self._extras is not None
        self._use_in_predict.enabled = not busy and self.last_checkpoint is not None
        self.export.button.enabled = not busy and self.last_checkpoint is not None
        self._use_newer.enabled = not busy
        self.assist.enable(not busy)

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
            shown = _layers.show_plane(self._viewer, event.labels, self._name("preview"), spatial, plane,
                                       like=self._crop or layer, below=labels_layer)
            if self._crop:
                self._crop.apply(shown)
        elif isinstance(event, TileDone):
            self._controls.report(event.fraction, f"predicting: tile {event.tile}/{event.tiles}, "
                                                  f"plane {event.plane + 1}/{event.planes}")
        elif isinstance(event, Message):
            say(event.text, event.level)

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
        found = ""
        if prediction is not None and layer in self._viewer.layers and \
                result.checkpoint.spec.family_entry.kind.boxes:
            _layers.show_boxes(self._viewer, prediction.boxes, self._name("boxes"), like=layer,
                               ndim=len(self._target[3]))
            self.last_prediction, self._extras = None, None  # boxes are corrected in their Shapes layer
            found = f"; {len(prediction.boxes)} boxes found"
        elif prediction is not None and layer in self._viewer.layers:
            shown = _layers.promote_preview(self._viewer, prediction.labels, self._name("preview"),
                                            self._name("prediction"), like=self._crop or layer,
                                            colors=prediction_kind(self._mode.value, prediction.kind))
            self.last_prediction, self._extras = prediction, outcome.extras
            if self._crop:  # the prediction covers the crop: nothing to correct or score against the layer
                self._crop.apply(shown)
                self.last_prediction, self._extras = None, None
                found = "; the prediction covers the trained crop"
        else:
            self._drop_preview()
        layer, _axes, plane, _spatial, labels = self._target
        self.assist.offer(outcome.prediction if self.last_prediction is not None else None, outcome.assist,
                          self._extras, plane, layer, labels, self._mode.value)
        text = (f"{'stopped' if result.stopped else 'done'}: {result.steps} steps in {result.seconds:.0f} s"
                + (f", {score_name(result.checkpoint.meta)} {dice:.3f}" if dice is not None else "") + found
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

    def export_package(self) -> None:
        """Export the kept model as a bioimage.io package, its test input from the plane shown."""
        layer, plane = self._target[0] if self._target else None, None
        if layer is not None and layer in self._viewer.layers and not _lazy.wants_blocks(layer):
            image, axes = _layers.image_from_layer(layer)
            index = _layers.current_plane(self._viewer, layer, axes)
            plane = image[index] if index else image
        self.export.start(self.last_checkpoint, plane)

    def _open_in_predict(self, *_args) -> None:
        if self.last_checkpoint is None:
            return
        widget = _layout.open_dock(self._viewer, "Predict")
        widget.set_checkpoint(self.last_checkpoint)
        if self._target is not None and self._target[0] in self._viewer.layers:
            widget.set_image(self._target[0])
