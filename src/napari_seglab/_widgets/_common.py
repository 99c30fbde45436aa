"""Small GUI pieces the dock widgets share: layer pickers, file pickers, progress + status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton

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


class RunControls(Container):
    """Run and Stop buttons, a progress bar and a status line."""

    def __init__(self, run_text: str, on_run: Callable[[], None], on_stop: Callable[[], None]):
        self.run_button = PushButton(text=run_text)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.run_button.changed.connect(lambda *_: on_run())
        self.stop_button.changed.connect(lambda *_: on_stop())
        buttons = Container(widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_MAX)
        self.status = wrapped_label("")
        super().__init__(widgets=[buttons, self.progress, self.status], labels=False)
        self.margins = (0, 0, 0, 0)

    def set_busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.stop_button.enabled = busy

    def set_fraction(self, fraction: float | None) -> None:
        if fraction is None:
            return
        self.progress.value = int(round(PROGRESS_MAX * min(1.0, max(0.0, fraction))))

    def say(self, text: str) -> None:
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
        widest = max(measure(w.label) for w in labelled)
        for w in labelled:
            w._labeled_widget().label_width = widest


def set_enabled(widgets, enabled: bool) -> None:
    for widget in widgets:
        widget.enabled = enabled
