"""PredictWidget: segment an image layer with a trained checkpoint."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from .. import _layers
from .._colors import prediction_kind
from ..core.device import DEVICES
from ..core.errors import InputError
from ..core.events import BlockDone, Message, TileDone
from ..core.models import Checkpoint, describe_checkpoint, load_checkpoint
from ..core.objects import paint_next
from ..core.predict import (
    DEFAULT_BLOCK,
    DEFAULT_VOLUME_BLOCK,
    MIN_VOLUME_BLOCK,
    STOCK,
    LoadedModel,
    Prediction,
    PredictOptions,
    is_package,
    iter_predict,
    load_model,
    load_package,
    package_summary,
    stock_available,
    stock_meta,
)
from ..core.settings import settings_of
from . import _common as ui
from . import _layout, _lazy
from ._predict_blocks import BlockwisePredict, load_predictor, refusal
from ._worker import JobSlot, error_text, stop_on_destroy

if TYPE_CHECKING:
    import napari


#: "where to paint next" boxes
SUGGESTIONS = 5

#: a box model predicts down to this score, so the threshold can be lowered live (to it) without predicting again
LIVE_SCORE_FLOOR = 0.05

#: pause between creating two output layers, so that the viewer draws the first before the next
REPAINT_PAUSE_MS = 80


def load_and_predict(checkpoint: Checkpoint, cached: LoadedModel | None, device: str, image: np.ndarray,
                     axes: str, options: dict, stop: threading.Event, *, uncertainty: bool = False,
                     suggestions: int = 0, plane: tuple[int, ...] = ()):
    """Build the model (unless ``cached``) and predict.

    Returns ``(LoadedModel, Prediction, (uncertainty, suggestion rows) or
    None, number of labels)``. With ``uncertainty`` or ``suggestions`` the
    entropy map and that many "paint next" boxes on ``plane`` are computed
    here, in the worker, as are the labels' compact dtype and count (of
    ``plane`` when only that plane was predicted): the GUI thread only shows
    them.
    """
    model = yield from load_predictor(checkpoint, cached, device, load=load_model)
    keep = options.get("probabilities", False)
    wanted = uncertainty or suggestions > 0
    prediction = yield from iter_predict(model, image, axes, stop=stop,
                                         **{**options, "probabilities": keep or wanted})
    if prediction.anisotropy is not None and not prediction.stopped and prediction.labels.ndim == 3:
        yield Message("measuring the 3D objects")
        prediction.objects = measure_volume(prediction.labels, options.get("pixel_size"))
    extras = None
    if wanted and prediction.probabilities is not None and not prediction.stopped:
        yield Message("measuring the uncertainty")
        extras = paint_next(prediction.probabilities, plane, suggestions)
    if not keep:
        prediction.probabilities = None
    prediction.labels = ui.compact_labels(prediction.labels)
    planes = options.get("planes")
    counted = prediction.labels[planes[0]] if planes and len(planes) == 1 else prediction.labels
    return model, prediction, extras, len(np.unique(counted)) - 1


def measure_volume(labels: np.ndarray, pixel_size) -> list[dict]:
    """Rows of :func:`~napari_seglab.core.objects.measure_objects` for 3D labels (µm³ where the voxel size is known)."""
    from ..core.objects import measure_objects

    size = tuple(pixel_size) if pixel_size is not None and len(pixel_size) == 3 else None
    return measure_objects(labels, pixel_size=size)


def _start_file(checkpoint_key: tuple) -> Path | None:
    """The checkpoint file a prediction came from, for Train to start from; None for a stock model (no file)."""
    return None if checkpoint_key[0] == "stock" else Path(checkpoint_key[0])


class PredictWidget(BlockwisePredict, Container):
    """Dock widget: choose a checkpoint and an image layer, predict labels (and boxes).

    Outputs: Labels ``"<image> labels"`` (the image's scale and translate),
    optional probability Image layers, and a Shapes layer ``"<image> boxes"``
    when the model detects objects; the score threshold re-filters it live.
    A box detector (RetinaNet, FCOS, Faster R-CNN) adds the Shapes layer
    alone, with features ``class`` and ``score``; the status shows how many
    boxes score at or above the threshold, following it as it changes.
    Optional: an ``"<image> uncertainty"`` map and ``"<image> paint next"``
    boxes. "Correct this prediction" copies the labels into an editable
    ``"<image> corrected"`` layer and sets the Train widget up to fine-tune
    this model on it.

    A multiscale layer, a layer backed by dask / zarr (not numpy) or one
    larger than 4096x4096 pixels goes block by block (U-Net / FCN at object
    scale 1): its full-resolution level is read one block window at a time,
    the labels go to the OME-Zarr of the "output" field (a temporary folder
    when it is empty) and come back as a lazy Labels layer of the store's
    levels. Progress follows the blocks; Stop leaves no store behind.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._slot = JobSlot()
        self._checkpoint: Checkpoint | None = None
        self._checkpoint_key = None
        self._model_cache: tuple[tuple, LoadedModel] | None = None
        self._target = None
        self._boxes_layer = None
        self._placeholders: list = []
        self._pending_layers: list = []  # output layers still to make, one per event-loop turn
        self._launch = None  # starts the job once the output layers exist
        self._started = 0.0
        self.last_prediction: Prediction | None = None
        self._scratch: list = []  # this dock's temporary folder for block-wise outputs, once made
        self._blocks: Path | None = None  # the store a block-wise run writes, while it runs

        self._file = ui.file_picker("model file", "r", "*.pt *.zip *.yaml",
                                    tooltip="a checkpoint written by SegLab training, or a bioimage.io model package "
                                            "(.zip or rdf.yaml)")
        self._package_about = ""
        self._about = ui.wrapped_label("choose a model file (.pt, or a bioimage.io .zip)", small=True)
        self._stock = ui.choice_combo("or stock model", ("none", *STOCK), "none")
        self._stock.tooltip = ("a stock torchvision model (COCO Mask R-CNN, VOC FCN) from the torch cache "
                               "instead of a file; trained on photographs, a starting point only")
        self._image = ui.layer_picker(napari_viewer, Image, "image", "the image to segment")
        opt = settings_of(PredictOptions)
        self._device = ui.choice_combo("device", DEVICES, "auto", opt["device"].text)
        self._tile = SpinBox(label=opt["tile"].label, value=0, min=0, max=int(opt["tile"].high), step=32,
                             tooltip=opt["tile"].text)
        self._overlap = FloatSpinBox(label=opt["overlap"].label, value=0.25, min=0.0, max=0.75, step=0.05,
                                     tooltip=opt["overlap"].text)
        self._pixel = FloatSpinBox(label="pixel size (µm)", value=0.0, min=0.0, max=1000.0, step=0.05,
                                   tooltip=opt["pixel_size"].text + "; 0 = the image layer's scale when it is set, "
                                                                    "else unknown (no resampling)")
        self._only_plane = CheckBox(text="only the plane shown", value=False,
                                    tooltip="for stacks: predict just the plane on screen (other planes keep their labels)")
        self._probabilities = CheckBox(text="probabilities", value=False, tooltip="also add class probability layers")
        self._split = CheckBox(text=opt["split_instances"].label, value=False, tooltip=opt["split_instances"].text)
        self._tta = CheckBox(text=opt["tta"].label, value=False, tooltip=opt["tta"].text)
        self._volume = CheckBox(text=opt["volume"].label, value=False, tooltip=opt["volume"].text)
        self._anisotropy = FloatSpinBox(label="anisotropy", value=0.0, min=0.0, max=float(opt["anisotropy"].high),
                                        step=0.5, tooltip=opt["anisotropy"].text + "; 0 = from the image layer's "
                                        "scale (z over y), else 1")
        self._uncertainty = CheckBox(text="uncertainty map", value=False,
                                     tooltip="add '<image> uncertainty': bright where the model is unsure")
        self._suggest = CheckBox(text="paint-next boxes", value=False,
                                 tooltip=f"add '<image> paint next': the {SUGGESTIONS} most uncertain boxes "
                                         "(of the plane shown)")
        self._threshold = FloatSpinBox(label=opt["score_threshold"].label, value=0.5, min=0.0, max=1.0, step=0.05,
                                       tooltip=opt["score_threshold"].text + "; changing it re-filters the boxes")
        self._output = ui.file_picker("output", "w", "*.zarr",
                                      tooltip="large or lazy layers (multiscale, dask / zarr, above 4096x4096 "
                                              "px) are predicted block by block into this OME-Zarr; empty = "
                                              "a temporary folder")
        self._block = SpinBox(label="block (px)", value=0, min=0, max=16384, step=256,
                              tooltip=f"block side for large or lazy layers; 0 = {DEFAULT_BLOCK}. With 3D objects: "
                                      f"the side of the 3D blocks in voxels ({MIN_VOLUME_BLOCK} or more; 0 = "
                                      f"{DEFAULT_VOLUME_BLOCK} once the volume holds more than 16 M voxels)")
        self._controls = ui.RunControls("Predict", self._on_predict, self._on_stop)
        self._correct = PushButton(text="Correct this prediction", enabled=False,
                                   tooltip="copy the labels into an editable '<image> corrected' layer, "
                                           "then fine-tune this model on the fixes in the Train widget")
        model = ui.form("Model", [self._file, self._stock], [self._about])
        options = ui.form("Image", [self._image, self._device, self._tile, self._overlap, self._threshold,
                                    self._pixel, self._anisotropy],
                          [self._only_plane, self._volume, self._probabilities, self._split, self._tta,
                           ui.button_row(self._uncertainty, self._suggest)])
        large = ui.form("Large images", [self._output, self._block])
        ui.align_labels([model, options, large])
        self._inputs = [model, options, large]
        settings = _layout.Scrolled([model, options, large])
        super().__init__(widgets=[_layout.dock_body([settings, self._controls, self._correct])], labels=False)
        self.margins = (0, 0, 0, 0)
        self._correct.changed.connect(lambda *_: self._controls.attempt(self.correct_prediction))

        self._file.changed.connect(self._on_file)
        self._stock.changed.connect(self._on_stock)
        self._threshold.changed.connect(self._on_threshold)
        self.reset_choices()
        stop_on_destroy(self.native, self._slot)
        _layout.tabify_when_docked(self)
        ui.warm_up()

    # ------------------------------------------------------------------ public helpers
    @property
    def busy(self) -> bool:
        return self._slot.busy or self._launch is not None

    def set_checkpoint(self, path: str | os.PathLike) -> None:
        """Choose the model file (shows its description)."""
        self._file.value = Path(path)
        self._on_file()  # also when the path is unchanged but the file was rewritten

    def set_image(self, layer) -> None:
        """Choose the image layer to predict."""
        self._image.value = layer

    # ------------------------------------------------------------------ checkpoint
    def _load_checkpoint(self) -> Checkpoint:
        if self._stock.value != "none":
            # metadata only: the weights load in the worker (the channel count follows the image layer)
            layer = self._image.value
            channels = 3 if layer is not None and getattr(layer, "rgb", False) else 1
            self._checkpoint_key = ("stock", self._stock.value, channels)
            return Checkpoint(meta=stock_meta(self._stock.value, channels), state_dict={},
                              path=f"stock:{self._stock.value}")
        path = ui.path_or_none(self._file)
        if path is None:
            raise InputError("choose a model file (.pt, or a bioimage.io .zip) first")
        key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else 0)
        if self._checkpoint is None or key != self._checkpoint_key:
            if is_package(path):  # read (and checked) once here; the worker loads it on its device
                package = load_package(path, "cpu")
                self._checkpoint = Checkpoint(meta=package.info, state_dict={}, path=str(path))
                self._package_about = f"{package_summary(package)}, label mode {package.label_mode}"
            else:
                self._checkpoint, self._package_about = load_checkpoint(path), ""
            self._checkpoint_key = key
        return self._checkpoint

    def _on_stock(self, *_args) -> None:
        name = self._stock.value
        if name == "none":
            self._on_file()
            return
        ready = "in the torch cache" if stock_available(name) else "NOT in the torch cache (predicting will say how to get it)"
        self._about.value = f"stock {name}: weights {ready}"

    def _on_file(self, *_args) -> None:
        if ui.path_or_none(self._file) is None:
            self._about.value = "choose a model file (.pt, or a bioimage.io .zip)"
            return
        try:
            checkpoint = self._load_checkpoint()
            self._about.value = self._package_about or describe_checkpoint(checkpoint)
        except InputError as exc:
            self._about.value = f"cannot use this file: {exc}"

    # ------------------------------------------------------------------ run
    def _on_predict(self) -> None:
        self._controls.attempt(self._start)

    def _start(self) -> None:
        checkpoint = self._load_checkpoint()
        layer = self._image.value
        if layer is None:
            raise InputError("no image layer: open an image first")
        if _lazy.wants_blocks(layer):
            why = refusal(checkpoint, self._split.value)
            lazy = _lazy.lazy_image(layer, checkpoint.spec.in_channels) if why is None and not self._volume.value else None
            if lazy is not None:
                self._start_blocks(checkpoint, layer, lazy)
                return
            if not _lazy.fits_whole(layer):
                raise InputError(f"layer {layer.name!r} is too large to predict whole, and "
                                 + (why or "block by block takes one 2D image (no Z or T stack, no 3D objects)"))
            # a small lazy layer that cannot go block by block (a stack, Mask R-CNN...): read whole
        image, axes = _layers.image_from_layer(layer, channels=checkpoint.spec.in_channels)
        shown = _layers.current_plane(self._viewer, layer, axes)
        plane = shown if self._only_plane.value else ()
        boxes = checkpoint.spec.family_entry.kind.boxes
        threshold = float(self._threshold.value)
        options = {
            "tile": self._tile.value or None, "overlap": float(self._overlap.value),
            "planes": [plane] if plane else None, "probabilities": self._probabilities.value,
            "split_instances": self._split.value, "tta": self._tta.value,
        }
        pixel = float(self._pixel.value) or _layers.layer_pixel_size(layer)
        if pixel:  # the model resamples an image of another pixel size to its own
            options["pixel_size"] = (pixel, pixel)
        if self._volume.value:  # 3D objects: the whole stack, whatever plane is shown
            options.update(volume=True, anisotropy=float(self._anisotropy.value) or None, planes=None,
                           pixel_size=_layers.layer_voxel_size(layer, axes) or options.get("pixel_size"))
            if self._block.value:  # the 3D blocks' side (voxels of the decoding grid); 0 = automatic
                options["block"] = int(self._block.value)
            plane = ()
        if not checkpoint.spec.family_entry.kind.dense:  # a per-pixel model scores nothing: no threshold
            # boxes: keep the weaker ones too, for the live threshold to show them
            options["score_threshold"] = min(threshold, LIVE_SCORE_FLOOR) if boxes else threshold
        key = (self._checkpoint_key, self._device.value)
        cached = self._model_cache[1] if self._model_cache and self._model_cache[0] == key else None
        self._target = (layer, plane, key)
        # output layers are created now, in answer to the click; the result only fills them
        spatial = _layers.spatial_shape(image, axes)
        wanted = [("labels", "labels", not boxes), ("uncertainty", "uncertainty", self._uncertainty.value),
                  ("regions", "paint next", self._suggest.value)]
        self._placeholders = []
        self._pending_layers = [(kind, f"{layer.name} {suffix}", spatial, layer) for kind, suffix, on in wanted if on]
        self._started = time.monotonic()
        self._controls.set_fraction(0)
        self._controls.say("predicting...")
        self._set_busy(True)
        device = self._device.value
        extra = {"uncertainty": self._uncertainty.value, "suggestions": SUGGESTIONS if self._suggest.value else 0,
                 "plane": shown}
        self._launch = lambda: self._slot.start(
            lambda stop: load_and_predict(checkpoint, cached, device, image, axes, options, stop, **extra),
            on_event=self._on_event, on_result=self._on_result, on_error=self._on_error,
            on_done=lambda: self._set_busy(False))
        self._reserve_next()  # the labels layer now, the maps in later turns of the event loop, then the job

    def _reserve_next(self) -> None:
        """Create one pending output layer and let the viewer repaint; once all exist, start the job.

        Adding a layer costs napari 100-400 ms on software OpenGL; three in one
        click handler froze the viewer for their sum. The job starts after the
        last one: its thread would otherwise compete with them for the GIL.
        """
        if self._launch is None:  # stopped before the job started
            return
        if self._target[0] not in self._viewer.layers:  # the image was closed meanwhile
            self._on_stop()
            return
        if self._pending_layers:
            kind, name, spatial, like = self._pending_layers.pop(0)
            if (made := _layers.reserve(self._viewer, kind, name, spatial, like=like)) is not None:
                self._placeholders.append(made)
        if self._pending_layers:
            QTimer.singleShot(REPAINT_PAUSE_MS, self._reserve_next)
        else:
            launch, self._launch = self._launch, None
            launch()

    def _drop_placeholders(self) -> None:
        """Remove the empty output layers made at the click (nothing came to fill them)."""
        self._pending_layers = []
        for made in self._placeholders:
            if made in self._viewer.layers:
                self._viewer.layers.remove(made)
        self._placeholders = []

    def _on_error(self, exc: BaseException) -> None:
        self._blocks = None
        self._drop_placeholders()
        self._controls.say(error_text(exc))

    def _on_stop(self) -> None:
        if self._launch is not None:  # still making the output layers: the job never starts
            self._launch = None
            self._drop_placeholders()
            self._set_busy(False)
            self._controls.say("stopped: nothing was added")
            return
        self._slot.stop()
        self._controls.say("stopping...")

    def _set_busy(self, busy: bool) -> None:
        self._controls.set_busy(busy, self._inputs)
        last = self.last_prediction
        self._correct.enabled = not busy and last is not None and not last.stopped and not last.kind.boxes

    def _on_event(self, event) -> None:
        if isinstance(event, TileDone) and self._blocks is not None:  # plane = block
            fraction = (event.plane + event.tile / max(1, event.tiles)) / max(1, event.planes)
            self._controls.report(fraction, f"block {event.plane + 1}/{event.planes}, tile {event.tile}/{event.tiles}")
        elif isinstance(event, BlockDone):
            if event.stage == "renumber":
                self._controls.report(None, f"numbering the objects: block {event.block}/{event.blocks}")
            else:
                self._controls.report(event.fraction, f"block {event.block}/{event.blocks} done")
        elif isinstance(event, TileDone):
            where = f", plane {event.plane + 1}/{event.planes}" if event.planes > 1 else ""
            self._controls.report(event.fraction, f"tile {event.tile}/{event.tiles}{where}")
        elif isinstance(event, Message):
            self._controls.say(event.text, event.level)

    def _on_result(self, value) -> None:
        model, prediction, extras, count = value
        self._pending_layers = []  # not made yet: the result makes what it needs
        layer, plane, key = self._target
        self._model_cache = (key, model)
        self.last_prediction = prediction
        if prediction.stopped:
            self._drop_placeholders()
            self._controls.say("stopped: nothing was added")
            return
        self.show_prediction(prediction, layer, plane, class_names=model.meta.get("class_names"),
                             label_mode=model.label_mode)
        note = ""
        if extras is not None:
            entropy, rows = extras
            if self._uncertainty.value:
                _layers.show_uncertainty(self._viewer, entropy, f"{layer.name} uncertainty", like=layer)
            if self._suggest.value:
                _layers.show_regions(self._viewer, rows, f"{layer.name} paint next", like=layer, ndim=entropy.ndim)
        elif self._uncertainty.value or self._suggest.value:
            note = "; this model gives no class probabilities, so no uncertainty map"
            # the empty layers made for the map at the click stay empty: take them away
            self._placeholders = [made for made in self._placeholders if not isinstance(made, Labels)]
            self._drop_placeholders()
        self._placeholders = []
        seconds = time.monotonic() - self._started
        self._controls.set_fraction(1.0)
        if prediction.kind.boxes:
            self._controls.say(f"done in {seconds:.1f} s: {self._box_count_text(float(self._threshold.value))}"
                               + note)
            return
        what = ("object" if count == 1 else "objects") if prediction.kind.instances else (
            "class" if count == 1 else "classes")
        self._controls.say(f"done in {seconds:.1f} s: {count} {what}"
                           + (f", {len(prediction.boxes)} boxes" if prediction.boxes else "") + note)

    def correct_prediction(self):
        """Copy the last prediction into the editable Labels layer ``"<image> corrected"``.

        The layer is in the model's label mode, selected and in paint mode;
        the Train widget opens with it as the labels and this model as the
        start. Returns the layer.
        """
        prediction = self.last_prediction
        layer = self._target[0] if self._target else None
        if prediction is None or prediction.stopped or layer not in self._viewer.layers:
            raise InputError("no prediction to correct: predict first (the image layer must still be open)")
        _layer, plane, key = self._target
        model = self._model_cache[1]  # the model that made this prediction, and its file
        mode = model.label_mode
        labels = ui.correction_labels(prediction.labels, prediction.kind, mode, [plane] if plane else None)
        corrected = _layers.show_correction(self._viewer, labels, f"{layer.name} corrected", mode, like=layer)
        train = _layout.open_dock(self._viewer, "Train")
        train.prepare_retraining(layer, corrected, _start_file(key[0]), mode)
        self._viewer.layers.selection.active = corrected
        return corrected

    def show_prediction(self, prediction: Prediction, layer, plane: tuple[int, ...] = (), class_names=None,
                        label_mode: str = "classes") -> None:
        """Put a Prediction into the viewer as layers named after the image ``layer``.

        Semantic labels get the class colours of the Train dock (class k
        like scribble value k + 1); object ids, one colour each. A box
        detector's prediction is its boxes alone (no labels layer).
        """
        if prediction.kind.boxes:
            self._boxes_layer = _layers.show_boxes(
                self._viewer, prediction.boxes, f"{layer.name} boxes", like=layer,
                ndim=prediction.labels.ndim, score_threshold=float(self._threshold.value))
            return
        labels_layer = _layers.show_labels(self._viewer, prediction.labels, f"{layer.name} labels", like=layer,
                                           plane=plane or None, role="prediction",
                                           colors=prediction_kind(label_mode, prediction.kind))
        if prediction.anisotropy is not None:
            _layers.show_volume(labels_layer, layer, prediction.anisotropy, prediction.objects)
        if prediction.probabilities is not None:
            _layers.show_probabilities(self._viewer, prediction.probabilities, layer.name, like=layer,
                                       class_names=class_names)
        if prediction.boxes:
            self._boxes_layer = _layers.show_boxes(
                self._viewer, prediction.boxes, f"{layer.name} boxes", like=layer,
                ndim=prediction.labels.ndim, score_threshold=float(self._threshold.value))

    def box_count(self, score_threshold: float) -> int:
        """How many boxes of the last prediction's Shapes layer score at or above ``score_threshold``."""
        layer = self._boxes_layer
        if layer is None or layer not in self._viewer.layers:
            return 0
        return _layers.count_boxes(layer, score_threshold)

    def _box_count_text(self, value: float) -> str:
        count = self.box_count(value)
        return f"{count} {'box' if count == 1 else 'boxes'} with score >= {value:.2f}"

    def _on_threshold(self, value: float) -> None:
        layer = self._boxes_layer
        if layer is not None and layer in self._viewer.layers and "seglab_boxes" in layer.metadata:
            _layers.filter_boxes(layer, float(value))
            self._controls.say(self._box_count_text(float(value)))
