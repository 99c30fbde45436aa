"""The Train dock's settings: controls built from TrainConfig's declarations, and the TrainConfig they describe.

Tooltips, ranges and choices come from the :class:`~napari_seglab.core.settings.Setting`
of each field, the same text ``seglab train --help`` prints; the core's
``check()`` judges the values, so the dock and the CLI refuse the same things.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox
from napari.layers import Image, Labels, Shapes

from .._colors import apply_colors, legend_html
from .._layers import layer_anisotropy, layer_pixel_size
from ..core.data import Normalization, estimate_scale, scale_for, target_diameter, to_chw
from ..core.device import DEVICES, pick_device
from ..core.errors import InputError
from ..core.labels import LABEL_MODES, get_mode
from ..core.models import DEFAULT_FAMILY, FAMILIES, get_family
from ..core.settings import SettingError, field_default, settings_of
from ..core.train import DEFAULT_TIME_LIMIT, DIAMETER, TrainConfig
from . import _common as ui
from . import _lazy
from ._models import MODELS_DIR, folder_note
from ._train_job import auto_number

ARCHS = {name: get_family(name).archs for name in FAMILIES}
#: the diameter estimate runs on the GUI thread at each labels change: only on planes this small
MAX_ESTIMATE_PIXELS = 16e6
#: ... and the estimate through the image at scribbles (about 0.25 s at this size, 2 s at 1024x1024); larger planes are
#: measured when training starts, in the worker
MAX_STROKE_ESTIMATE_PIXELS = 1 << 17
#: the encoder entry that lets the preset decide
FROM_PRESET = "(preset)"
COMMON_ENCODERS = (FROM_PRESET, "resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b3",
                   "mobilenet_v2", "densenet121", "vgg16_bn", "timm-regnety_004")
SETTINGS = settings_of(TrainConfig)
#: the "annotated area" choice that means: the whole image is annotated
WHOLE_IMAGE = "(whole image)"
#: label modes of a box family that declares none, and the modes every other family offers
BOX_MODES = ("boxes", "instances")
DENSE_MODES = tuple(m for m in LABEL_MODES if m != "boxes")


def family_modes(family: str) -> tuple[str, ...]:
    """The label modes the dock offers for ``family``: box families boxes (and instances), others the rest."""
    fam = get_family(family)
    if fam.kind.boxes:
        return tuple(m for m in BOX_MODES if fam.label_modes is None or m in fam.label_modes) or BOX_MODES
    return DENSE_MODES


def area_picker(viewer) -> ComboBox:
    """The "annotated area" picker: the whole image, or a Shapes layer of rectangles."""

    def choices(_widget=None):
        return [(WHOLE_IMAGE, WHOLE_IMAGE), *((layer.name, layer) for layer in viewer.layers
                                              if isinstance(layer, Shapes))]

    return ComboBox(label="annotated area", choices=choices, nullable=False,
                    tooltip="rectangles marking where every object has its box: patches are cut only there, so "
                            "unboxed objects elsewhere are never taught as background; (whole image): every object "
                            "of the image is boxed")


def tip(name: str) -> str:
    """The tooltip of setting ``name``: its help and what "auto" means, as in ``seglab train --help``."""
    return SETTINGS[name].text


def spin(name: str, label: str, value, *, zero: str = "", step=None, whole: bool = False):
    """A spin box for setting ``name`` with the declared range; ``zero``: what 0 means (0 stands for None).

    ``whole``: whole numbers for a float setting (seconds).
    """
    s = SETTINGS[name]
    box = SpinBox if s.kind is int or whole else FloatSpinBox
    low = 0 if zero else s.low
    extra = {"step": step} if step is not None else {}
    return box(label=label, value=value, min=low, max=s.high, tooltip=tip(name) + (f"; 0 = {zero}" if zero else ""),
               **extra)


def auto_edit(name: str, label: str) -> LineEdit:
    """A text field holding "auto" (the core decides) or a number for setting ``name``."""
    return LineEdit(label=label, value="auto", tooltip=tip(name))


class TrainSettings:
    """Mixin of :class:`~napari_seglab._widgets.train.TrainWidget`: the Data, Model and Training tabs' controls."""

    def _build_settings(self, viewer, save_to: Path) -> list:
        """Create the setting controls; returns the Data, Model and Training forms."""
        self._image = ui.layer_picker(viewer, Image, "image", "the image to learn from")
        self._labels_combo = ui.layer_picker(viewer, Labels, "labels", "painted labels, same shape as the image")
        self._boxes_combo = ui.layer_picker(viewer, Shapes, "boxes", "a Shapes layer of rectangles, one around "
                                            "each object (a 'class' feature gives classes 1, 2, ...)")
        self._area_combo = area_picker(viewer)
        self._boxes_combo.visible = self._area_combo.visible = False
        self._mode = ui.choice_combo("label mode", DENSE_MODES, "scribbles", tip("label_mode"))
        self._legend = ui.wrapped_label(legend_html("scribbles"), small=True)
        self._pairs = ui.PairList(viewer)
        self._matching = CheckBox(text="also all '<image> scribbles' pairs", value=False,
                                  tooltip="also train on every Labels layer named '<image name> <suffix>', the "
                                          "suffix one of: " + ", ".join(ui.PAIR_SUFFIXES)
                                          + " (e.g. 'cells corrected'; model outputs are skipped)")
        self._init = ui.file_picker("start from", "r", "*.pt", tooltip=tip("init") + "; empty = a new model")
        self._family = ui.choice_combo("family", FAMILIES, DEFAULT_FAMILY, tip("family"))
        self._preset = ui.choice_combo("preset", ("auto", *get_family(DEFAULT_FAMILY).presets), "auto", tip("preset"))
        self._head = ui.choice_combo("instance head", ("auto", *SETTINGS["instance_head"].choices), "auto",
                                     tip("instance_head"))
        self._head.enabled = False
        self._diameter = LineEdit(label=DIAMETER.label, value="auto", tooltip=DIAMETER.text)
        self._diameter_note = ui.wrapped_label("", small=True)
        self._pixel = LineEdit(label="pixel size (µm)", value="auto",
                               tooltip=tip("pixel_size") + "; auto: the image layer's scale, when it is set")
        self._anisotropy = FloatSpinBox(label="anisotropy", value=0.0, min=0.0, max=float(SETTINGS["anisotropy"].high),
                                        step=0.5, tooltip=tip("anisotropy") + "; 0 = from the image layer's scale "
                                                                              "(z over y), when it is set")
        self._arch = ui.choice_combo("architecture", ARCHS[DEFAULT_FAMILY], get_family(DEFAULT_FAMILY).default_arch,
                                     tip("arch"))
        self._encoder = ui.choice_combo("encoder", COMMON_ENCODERS, FROM_PRESET,
                                        tip("encoder") + "; (preset): the preset's; or type any name")
        self._encoder.native.setEditable(True)
        self._pretrained = ui.choice_combo("pretrained", ("none", "auto"), "none", tip("pretrained"))
        self._epochs = spin("epochs", "epochs", 0, zero="train for the time budget only")
        self._time = spin("time_limit", "time budget (s)", int(DEFAULT_TIME_LIMIT), zero="no limit", step=30,
                          whole=True)
        self._steps = spin("steps_per_epoch", "steps per epoch", field_default(TrainConfig, "steps_per_epoch"))
        self._patch, self._batch, self._lr = (auto_edit("patch", "patch"), auto_edit("batch_size", "batch size"),
                                              auto_edit("lr", "learning rate"))
        self._weights = ui.choice_combo("class weights", SETTINGS["class_weights"].choices, "none",
                                        tip("class_weights"))
        self._gamma = spin("focal_gamma", "focal gamma", 0.0, step=0.5)
        self._self_training = ui.choice_combo("self-training", ("auto", "on", "off"), "auto", tip("self_training"))
        self._device = ui.choice_combo("device", DEVICES, "auto", tip("device"))
        self._preview = spin("preview_every", "live preview every", 10)
        self._save_to = ui.file_picker("save to", "w", "*.pt", value=save_to,
                                       tooltip="the best model is written here (about 100 MB for a resnet34 "
                                               "U-Net; Continue's optimizer state, M.last.pt, about 3x more "
                                               "until the next run); empty = keep it in memory only")
        self._folder = ui.wrapped_label("", small=True)
        self._read_255 = CheckBox(text=SETTINGS["read_255_as_foreground"].label, value=False,
                                  tooltip=tip("read_255_as_foreground"))
        data = ui.form("", [self._image, self._labels_combo, self._boxes_combo, self._area_combo, self._mode],
                       [self._legend, self._pairs, self._matching])
        model = ui.form("", [self._init, self._family, self._preset, self._arch, self._encoder, self._pretrained,
                             self._head, self._diameter, self._pixel, self._anisotropy], [self._diameter_note])
        budget = ui.form("", [self._epochs, self._time, self._steps, self._patch, self._batch, self._lr,
                              self._weights, self._gamma, self._self_training, self._device, self._preview,
                              self._save_to],
                         [self._folder, self._read_255])
        return [data, model, budget]

    def _connect_settings(self) -> None:
        self._mode.changed.connect(self._on_mode)
        self._labels_combo.changed.connect(lambda *_: self._color_labels())
        self._labels_combo.changed.connect(lambda *_: self._estimate_diameter())
        self._image.changed.connect(lambda *_: self._estimate_diameter())
        self._diameter.changed.connect(lambda *_: self._estimate_diameter())
        self._family.changed.connect(self._on_family)
        self._device.changed.connect(self._on_device)
        self._init.changed.connect(self._on_init)
        self._save_to.changed.connect(lambda *_: self._show_folder())

    # ------------------------------------------------------------------ the TrainConfig
    def config(self, init: Path | None = None) -> TrainConfig:
        """The TrainConfig the controls describe, checked by the core (raises InputError on a bad value).

        ``init``: the checkpoint to start from; default the "start from" field.
        """
        return self._settings(init).check()

    def _settings(self, init: Path | None = None) -> TrainConfig:
        """The TrainConfig the controls describe, not yet checked (see :meth:`config`)."""
        lr = auto_number(self._lr.value, float, "learning rate", "1e-3")
        patch = auto_number(self._patch.value, int, "patch", "128")
        batch = auto_number(self._batch.value, int, "batch size", "8")
        diameter = auto_number(self._diameter.value, float, DIAMETER.label, "20")
        if diameter is not None and not DIAMETER.accepts(diameter):
            raise SettingError(DIAMETER, diameter)
        if not self._epochs.value and not self._time.value:
            raise InputError("give a number of epochs or a time limit (both are 0)")
        encoder = self._encoder.native.currentText().strip()
        encoder = None if encoder in ("", FROM_PRESET) or not self._encoder.enabled else encoder
        save_to = ui.path_or_none(self._save_to)
        init = init or ui.path_or_none(self._init)
        if init is not None and not init.is_file():
            raise InputError(f"start-from model {init} does not exist")
        pixel = auto_number(self._pixel.value, float, "pixel size", "0.65")
        if pixel is None:  # a layer placed in µm (its scale) says what its pixels measure
            pixel = layer_pixel_size(self._image.value)
        # a stack placed in µm says its z step; unknown: the core trains on YX planes and says how to add ZX/ZY
        anisotropy = float(self._anisotropy.value) or layer_anisotropy(self._image.value)
        return TrainConfig(
            pixel_size=pixel, anisotropy=anisotropy, label_mode=self._mode.value, family=self._family.value, arch=self._arch.value, encoder=encoder,
            # a typed encoder replaces the preset's (the core refuses both from other callers)
            preset=None if self._preset.value == "auto" or encoder or not self._preset.enabled else self._preset.value,
            scale=scale_for(diameter, target_diameter(self._mode.value)) if diameter is not None else None,
            pretrained=None if self._pretrained.value == "none" else self._pretrained.value,
            epochs=self._epochs.value or None, time_limit=float(self._time.value) or None,
            steps_per_epoch=self._steps.value, patch=patch, batch_size=batch,
            # a family that does not use them gets the defaults (their controls are greyed out)
            lr=lr, class_weights=self._weights.value if self._weights.enabled else "none",
            focal_gamma=float(self._gamma.value) if self._gamma.enabled else 0.0,
            device=self._device.value, model_out=str(save_to) if save_to else None,
            init=str(init) if init else None,
            # a detector's live prediction costs many steps' time on a CPU: box runs show the result at the end
            preview_every=0 if get_family(self._family.value).kind.boxes else self._preview.value,
            read_255_as_foreground=self._read_255.value,
            self_training={"on": True, "off": False}.get(self._self_training.value)
            if self._self_training.enabled else None,
            instance_head=self._head.value if self._head.enabled and self._head.value != "auto" else None)

    # ------------------------------------------------------------------ callbacks
    @property
    def box_mode(self) -> bool:
        """True when the dock trains a box detector from Shapes rectangles (label mode "boxes")."""
        return self._mode.value == "boxes"

    def _on_mode(self, mode: str) -> None:
        boxes = mode == "boxes"
        self._labels_combo.visible = not boxes
        self._boxes_combo.visible = self._area_combo.visible = boxes
        self._pairs.visible = self._matching.visible = not boxes
        if boxes:
            self._legend.value = "box detector: draw a rectangle around every object<br>" \
                                 + get_mode(mode).legend.replace("; ", "<br>")
            return
        self._legend.value = legend_html(mode)
        self._update_head()
        self._color_labels()
        self._estimate_diameter()

    def _estimate_diameter(self) -> None:
        """Show the object diameter measured on the painted objects and the resampling it implies."""
        layer, mode = self._labels_combo.value, get_mode(self._mode.value)
        if self.box_mode:
            layer = None
        typed = self._diameter.value.strip().lower()
        if typed not in ("", "auto"):
            try:
                d = float(typed)
            except ValueError:
                self._diameter_note.value = "type a number of pixels, or auto"
                return
            self._diameter_note.value = f"resampling by {scale_for(d, target_diameter(mode.name)):g}"
            return
        measurable = mode.instances or mode.painted == "strokes"
        if layer is None or not measurable or _lazy.is_lazy(layer) or np.asarray(layer.data).size > MAX_ESTIMATE_PIXELS:
            self._diameter_note.value = "auto: no resampling (paint whole objects or strokes to measure them)"
            return
        labels = np.asarray(layer.data)
        image = self._image.value
        # strokes are measured through the image (18 filtered copies): only small planes on the GUI thread
        too_big = not mode.instances and labels.size > MAX_STROKE_ESTIMATE_PIXELS
        if labels.ndim != 2 or too_big or image is None or _lazy.wants_blocks(image) \
                or np.asarray(image.data).shape[:2] != labels.shape:
            self._diameter_note.value = "auto: measured when training starts"
            return
        try:
            chw = Normalization().apply(to_chw(np.asarray(image.data, np.float32)))
            scale, d = estimate_scale([(chw, labels)], mode.name)
        except (InputError, ValueError):
            self._diameter_note.value = "auto: measured when training starts"
            return
        what = "painted objects measure" if mode.instances else "objects at your strokes measure about"
        self._diameter_note.value = "auto: nothing painted to measure yet" if d is None else \
            f"auto: {what} {d:.0f} px; resampling by {scale:g}"

    def _color_labels(self) -> None:
        """Give the picked labels layer the class colours of its mode (unless the user chose colours)."""
        layer = self._labels_combo.value
        if layer is not None and not self.box_mode:
            apply_colors(layer, self._mode.value, force=False)

    def _show_folder(self) -> None:
        path = ui.path_or_none(self._save_to)
        self._folder.value = folder_note(path.parent if path else MODELS_DIR)
        self._save_to.line_edit.tooltip = str(path) if path else "empty: the model is kept in memory only"
        self._save_to.line_edit.native.setCursorPosition(0)  # show where it goes, not just the end of the name

    def _update_head(self) -> None:
        """The instance head applies to fresh unet / fcn models trained on instances or objects labels;
        self-training to dense networks on scribbles or objects labels."""
        self._head.enabled = (get_mode(self._mode.value).instances and len(get_family(self._family.value).heads) > 1
                              and ui.path_or_none(self._init) is None)
        self._self_training.enabled = bool(get_mode(self._mode.value).self_training) and \
            SETTINGS["self_training"].used_by(get_family(self._family.value))

    def _on_family(self, family: str) -> None:
        fam = get_family(family)
        # callables: a static list would fall back to the first one at the next reset_choices (a layer added)
        self._arch.choices = lambda _widget=None, archs=fam.archs: archs
        self._arch.value = fam.default_arch_on(self._device_type())
        self._encoder.enabled = fam.encoders is not None and ui.path_or_none(self._init) is None
        self._preset.enabled = bool(fam.presets) and self._encoder.enabled
        for control, name in ((self._weights, "class_weights"), (self._gamma, "focal_gamma")):
            control.enabled = SETTINGS[name].used_by(fam)  # greyed out where the family would ignore it
        modes, mode = family_modes(family), self._mode.value
        self._mode.choices = lambda _widget=None, modes=modes: modes
        if fam.kind.boxes and mode != "boxes" and "boxes" in modes:
            mode = "boxes"  # a box detector learns from drawn boxes first
        elif fam.label_modes is not None and mode not in fam.label_modes:
            mode = fam.label_modes[0]
        self._mode.value = mode if mode in modes else modes[0]
        self._on_mode(self._mode.value)
        self._update_head()

    def _device_type(self) -> str:
        """"cuda" when the chosen device is (or "auto" picks) a CUDA GPU, else what it is."""
        try:
            return pick_device(self._device.value).type
        except InputError:  # asked for a device this machine lacks: the run says so
            return str(self._device.value).split(":")[0]

    def _on_device(self, *_args) -> None:
        # a family default follows the device (ResNet-18 networks on a CPU, ResNet-50 on a GPU); a choice stays
        fam = get_family(self._family.value)
        if self._arch.value in (fam.default_arch, fam.gpu_arch):
            self._arch.value = fam.default_arch_on(self._device_type())

    def _on_init(self, *_args) -> None:
        # a start model brings its own architecture
        fresh = ui.path_or_none(self._init) is None
        ui.set_enabled([self._family, self._arch, self._pretrained], fresh)
        fam = get_family(self._family.value)
        self._encoder.enabled = fresh and fam.encoders is not None
        self._preset.enabled = bool(fam.presets) and self._encoder.enabled
        self._update_head()
