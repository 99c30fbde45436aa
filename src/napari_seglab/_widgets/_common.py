"""Small GUI pieces the dock widgets share: layer pickers, file pickers, progress + status, tabs, pair lists."""

from __future__ import annotations

import atexit
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton

from .._layers import ROLE
from ..core.errors import InputError
from ..core.labels import compact_labels as _compact_labels
from ._layout import Tabs  # noqa: F401 - re-exported for the docks
from ._worker import error_text, report_error

#: Qt object name of the status lines (what the layout test looks for)
STATUS_NAME = "seglab_status"
#: the progress bar counts in thousandths
PROGRESS_MAX = 1000


def layer_picker(viewer, layer_type: type, label: str, tooltip: str = "") -> ComboBox:
    """A ComboBox listing the viewer's layers of ``layer_type`` by name.

    Its choices are re-read on ``reset_choices()``, which napari calls for a
    docked widget whenever layers are inserted, removed, renamed or reordered.
    """

    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]

    combo = ComboBox(label=label, choices=choices, nullable=False, tooltip=tooltip)
    _elide_combo(combo)
    return combo


def choice_combo(label: str, choices, value=None, tooltip: str = "") -> ComboBox:
    combo = ComboBox(label=label, choices=list(choices), tooltip=tooltip,
                     **({"value": value} if value is not None else {}))
    _elide_combo(combo)
    return combo


def _elide_combo(combo: ComboBox) -> None:
    # long layer or encoder names must not widen the whole dock
    from qtpy.QtWidgets import QComboBox

    combo.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.native.setMinimumContentsLength(8)


def file_picker(label: str, mode: str = "r", filter: str | None = None, value=None,  # noqa: A002
                tooltip: str = "") -> FileEdit:
    """A FileEdit ("r" existing file, "w" file to write, "d" folder); empty means None."""
    edit = FileEdit(label=label, mode=mode, filter=filter, value=value, nullable=True, tooltip=tooltip)
    edit.choose_btn.text = "Browse..."
    edit.line_edit.native.setMinimumWidth(60)
    edit.line_edit.tooltip = tooltip
    return edit


def path_or_none(edit: FileEdit) -> Path | None:
    """The FileEdit's path, or None when the field is empty."""
    text = edit.line_edit.value.strip()
    return Path(text).expanduser() if text else None


def wrapped_label(text: str = "", *, small: bool = False) -> Label:
    """A Label whose text wraps instead of widening the dock."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=text)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    label.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if small:
        font = label.native.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        label.native.setFont(font)
    return label


#: frequent progress (a step, a tile) is drawn at most this often: each redraw of a dock costs the GUI thread
REPORT_MS = 250


class RunControls(Container):
    """Run and Stop buttons, a progress bar and a status line."""

    def __init__(self, run_text: str, on_run: Callable[[], None], on_stop: Callable[[], None]):
        from qtpy.QtCore import QTimer

        self._pending: tuple[float | None, str] | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REPORT_MS)
        self._timer.timeout.connect(self._flush)
        self.run_button = PushButton(text=run_text)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.run_button.changed.connect(lambda *_: on_run())
        self.stop_button.changed.connect(lambda *_: on_stop())
        self.buttons = Container(widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False)
        self.buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_MAX)
        self.status = wrapped_label("")
        self.status.native.setObjectName(STATUS_NAME)
        super().__init__(widgets=[self.buttons, self.progress, self.status], labels=False)
        self.margins = (0, 0, 0, 0)
        # deleted with the dock: a report due after the viewer closed must not draw into deleted widgets
        self._timer.setParent(self.native)

    def attempt(self, action: Callable[[], object]) -> None:
        """Run ``action`` (a click's handler); bad input becomes a notification and the status line."""
        try:
            action()
        except InputError as exc:
            report_error(exc)
            self.say(error_text(exc))

    def set_busy(self, busy: bool, inputs: Sequence = ()) -> None:
        """Run off and Stop on while ``busy`` (and the dock's ``inputs`` locked), the other way round after."""
        set_enabled(inputs, not busy)
        self.run_button.enabled = not busy
        self.stop_button.enabled = busy

    def stop(self, slot, until: str) -> None:
        """Ask the job in ``slot`` to stop, saying when it will (``until``: "the current step")."""
        slot.stop()
        self.say(f"stopping after {until}...")

    def set_fraction(self, fraction: float | None) -> None:
        if fraction is None:
            return
        self.progress.value = int(round(PROGRESS_MAX * min(1.0, max(0.0, fraction))))

    def say(self, text: str, level: str = "info") -> None:
        """Show ``text`` now (and drop any progress still waiting to be drawn).

        A ``"warning"`` (a core Message's level: something the user should act on) is also a napari
        warning notification, which outlives the status line.
        """
        self._pending = None
        self.status.value = text
        if level == "warning":
            from napari.utils.notifications import show_warning

            show_warning(text)

    def report(self, fraction: float | None, text: str) -> None:
        """Progress of a frequent event: drawn within :data:`REPORT_MS`, the latest one only."""
        self._pending = (fraction, text)
        if not self._timer.isActive():
            self._timer.start()

    def _flush(self) -> None:
        if self._pending is not None:
            fraction, text = self._pending
            self._pending = None
            self.set_fraction(fraction)
            self.status.value = text


def form(title: str, widgets: list, notes: list | None = None) -> Container:
    """A sub-form: a bold heading, labelled ``widgets``, then full-width ``notes``."""
    heading = wrapped_label(f"<b>{title}</b>") if title else None
    fields = Container(widgets=widgets, labels=True)
    fields.margins = (0, 0, 0, 0)
    parts = [w for w in (heading, fields, *(notes or [])) if w is not None]
    box = Container(widgets=parts, labels=False)
    box.margins = (0, 2, 0, 2)
    return box


def align_labels(forms: list[Container]) -> None:
    """Give the label columns of several sub-forms one width, so their fields line up."""
    from magicgui.application import use_app

    measure = use_app().get_obj("get_text_width")
    labelled = []
    for box in forms:
        for part in box:
            if isinstance(part, Container) and part.labels:
                labelled.extend(w for w in part if getattr(w, "_labeled_widget", None) and w._labeled_widget())
    if labelled:
        # the measure uses the application font; the dock's style sheet may draw labels a little wider
        widest = max(measure(w.label) for w in labelled) + 8
        for w in labelled:
            w._labeled_widget().label_width = widest


def set_enabled(widgets, enabled: bool) -> None:
    for widget in widgets:
        widget.enabled = enabled


def button_row(*buttons: PushButton) -> Container:
    """Buttons side by side, sharing the dock's width."""
    row = Container(widgets=list(buttons), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


def holder(qwidget) -> Container:
    """A magicgui Container around a plain QWidget (a plot), so it can sit in a magicgui layout."""
    box = Container(labels=False)
    box.margins = (0, 0, 0, 0)
    box.native.layout().addWidget(qwidget)
    box.native.setSizePolicy(qwidget.sizePolicy())
    return box


class PairList(Container):
    """More (image, labels) pairs: rows of two layer pickers and a remove button, then an add button."""

    def __init__(self, viewer):
        self._viewer = viewer
        self.rows: list[Container] = []
        self.add_button = PushButton(text="+ add an image/labels pair",
                                     tooltip="train on several images at once, each with its own labels")
        self.add_button.changed.connect(lambda *_: self.add_row())
        super().__init__(widgets=[self.add_button], labels=False)
        self.margins = (0, 0, 0, 0)

    def add_row(self, image=None, labels=None) -> Container:
        """Add a row of pickers (preset to the given layers when they are in the viewer)."""
        from napari.layers import Image, Labels

        image_combo = layer_picker(self._viewer, Image, "", "an image to learn from")
        labels_combo = layer_picker(self._viewer, Labels, "", "its labels, same shape")
        remove = PushButton(text="\u2212", tooltip="remove this pair")
        remove.native.setFixedWidth(28)
        row = Container(widgets=[image_combo, labels_combo, remove], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        remove.changed.connect(lambda *_: self.remove_row(row))
        self.insert(len(self) - 1, row)
        self.rows.append(row)
        for combo, layer in ((image_combo, image), (labels_combo, labels)):
            combo.reset_choices()
            if layer is not None and layer in self._viewer.layers:
                combo.value = layer
        return row

    def remove_row(self, row: Container) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self.remove(row)

    def pairs(self) -> list[tuple]:
        """(image layer, labels layer) of each row; a row missing a layer gives None there."""
        return [(row[0].value, row[1].value) for row in self.rows]


# --------------------------------------------------------------------- arrays and layers for the widgets
#: labels for napari in the worker: uint8 / uint16, which napari draws directly; wider ids stay as they are
compact_labels = functools.partial(_compact_labels, widest=np.uint16)


def correction_labels(prediction: np.ndarray, kind: str, mode: str,
                      planes: list[tuple[int, ...]] | None = None) -> np.ndarray:
    """Labels in ``mode`` to correct from predicted ``prediction`` (image shape, integer).

    ``kind`` is the prediction's ("semantic" or "instances"): object ids
    become one foreground class for the semantic modes. ``planes``: the T/Z
    planes that were predicted (None = all); the others stay 0, which means
    "not annotated" for scribbles.
    """
    from ..core.labels import to_correction

    prediction = np.asarray(prediction)
    if not planes:
        return to_correction(prediction, mode, kind)
    out = None
    for index in planes:
        part = to_correction(prediction[index], mode, kind)
        if out is None:
            out = np.zeros(prediction.shape, part.dtype)
        out[index] = part
    return out


#: name endings that pair a Labels layer with the Image layer it annotates ("cells scribbles" -> "cells")
PAIR_SUFFIXES = ("labels", "scribbles", "annotations", "corrected")


def matching_pairs(viewer) -> list[tuple]:
    """(image layer, labels layer) for every Labels layer named ``"<image name> <suffix>"``.

    Suffixes are :data:`PAIR_SUFFIXES`; layers written by a model (a role of
    "prediction", "preview" or "suggestions") are left out, corrections are in.
    """
    from napari.layers import Image, Labels

    images = {layer.name: layer for layer in viewer.layers if isinstance(layer, Image)}
    pairs = []
    for layer in viewer.layers:
        if not isinstance(layer, Labels) or layer.metadata.get(ROLE) in ("prediction", "preview"):
            continue
        stem, _, suffix = layer.name.rpartition(" ")
        if suffix in PAIR_SUFFIXES and stem in images:
            pairs.append((images[stem], layer))
    return pairs


_warm_up: threading.Thread | None = None
#: seconds napari's exit waits for an unfinished warm-up (the imports take a few seconds)
WARM_UP_EXIT_WAIT = 120


def warm_up() -> threading.Thread:
    """Import and exercise the model stack once per session, in a background thread.

    The first training or prediction imports about 1,700 modules
    (segmentation-models-pytorch, timm, torchvision, parts of torch's
    compiler) and initialises torch's CPU kernels. Done inside a job, that
    stalls the viewer for hundreds of milliseconds right after the user
    presses Train; done when a dock opens, it is over before the first run.
    Returns the (possibly finished) thread.
    """
    global _warm_up
    if _warm_up is None:
        def work() -> None:
            with contextlib.suppress(Exception):  # only a head start: the job reports real errors
                from ..core.device import lower_thread_priority

                lower_thread_priority()  # the imports must not take the CPU from the viewer
                import torch

                from ..core.models import DEFAULT_PRESET, build_model, preset_spec

                model, _note = build_model(preset_spec(DEFAULT_PRESET["cpu"]))
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                model(torch.zeros(1, 1, 32, 32)).mean().backward()
                optimizer.step()

        _warm_up = threading.Thread(target=work, name="seglab-warm-up", daemon=True)
        _warm_up.start()
        # a viewer closed while the imports run: the interpreter must not finalise under the thread
        # (torch's C++ then aborts with "terminate called without an active exception")
        atexit.register(_warm_up.join, WARM_UP_EXIT_WAIT)
    return _warm_up
