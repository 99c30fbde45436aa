"""Model-assisted annotation in the Train dock: click to add a predicted object, accept the confident ones.

The panel holds no algorithm: :mod:`napari_seglab.core.objects` picks the
object under a click (:func:`~napari_seglab.core.objects.object_at`), judges
the objects predicted where nothing is painted
(:func:`~napari_seglab.core.objects.assess_objects`) and lists the pixels of
new objects (:func:`~napari_seglab.core.objects.new_objects`); the panel runs
them in a worker on copies of one plane and writes the result into the labels
layer on the main thread with ``Labels.data_setitem``, which napari records
as one undo step (Ctrl+Z takes an added object, or all accepted objects,
back). New objects get ids above every id of the layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import CheckBox, Container, PushButton

from .. import _layers
from ..core.errors import InputError
from ..core.labels import get_mode
from ..core.objects import AssistReport, assess_objects, new_objects, object_at
from . import _common as ui
from ._worker import JobSlot, error_text, stop_on_destroy

OFF_TEXT = "assisted annotation: train in the objects or instances mode first"
#: after the user paints, undoes or moves to another plane, the report is recomputed once the layer
#: has been quiet this long (milliseconds)
REFRESH_MS = 500


@dataclass
class AssistSource:
    """What the last training run left for assisted annotation (all copies, owned by the panel).

    ``predicted``: the prediction's object ids, the image's spatial shape;
    ``uncertainty``: its normalised entropy (same shape) or None;
    ``flow_errors``: per predicted id of plane ``plane`` (index id - 1) or None;
    ``image`` / ``labels``: the layers trained on; ``mode``: the label mode.
    """

    predicted: np.ndarray
    uncertainty: np.ndarray | None
    flow_errors: np.ndarray | None
    plane: tuple[int, ...]
    image: object
    labels: object
    mode: str

    @property
    def first_id(self) -> int:
        """The first value that is an object (2 in the objects mode, where 1 is background strokes)."""
        return 1 + get_mode(self.mode).shift


def assist_applies(mode: str, kind: str) -> bool:
    """Assisted annotation needs object labels and a prediction of objects (not scribbles' classes)."""
    return get_mode(mode).instances and mode != "boxes" and str(kind) == "instances"


def _pick_job(predicted, painted, point, assess: dict):
    """Worker: the unpainted pixels of the object under ``point`` and the report after adding it."""
    ys, xs = object_at(predicted, painted, point)
    after = painted.copy()
    after[ys, xs] = max(int(painted.max()) + 1, assess["first_id"])
    yield from ()
    return ys, xs, assess_objects(predicted, after, **assess)


def _assess_job(predicted, painted, assess: dict):
    """Worker: the report of a plane as it is painted now."""
    yield from ()
    return assess_objects(predicted, painted, **assess)


def _accept_job(predicted, painted, assess: dict):
    """Worker: the pixels of every confident object (values 0, 1, ... per object) and the report after."""
    report = assess_objects(predicted, painted, **assess)
    ids = report.confident_ids
    ys, xs, order = new_objects(predicted, painted, ids, start=0)
    after = painted.copy()
    after[ys, xs] = order + max(int(painted.max()) + 1, assess["first_id"])
    yield from ()
    return ys, xs, order, len(ids), assess_objects(predicted, after, **assess)


class AssistPanel(Container):
    """The "Assist: click to add objects" toggle, "Accept confident", "Show doubtful" (numbered "paint next"
    boxes on the doubtful objects) and the report line of the Train dock."""

    def __init__(self, viewer, say):
        self._viewer = viewer
        self._say = say  # the dock's status line: what the last action did, or why it did nothing
        #: the last thing the panel said on the dock's status line
        self.message = ""
        self._source: AssistSource | None = None
        self.report: AssistReport | None = None
        self._slot = JobSlot()
        #: the (plane, painted copy) the shown report was computed from: a refresh that finds the same skips
        self._assessed: tuple[tuple[int, ...], np.ndarray] | None = None
        self._hooked = None  # the labels layer whose edits refresh the report
        from qtpy.QtCore import QTimer

        self._refresh_timer = QTimer()
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh_report)
        self.toggle = CheckBox(text="Assist: click to add objects", value=False, enabled=False,
                               tooltip="a click on an unpainted object adds the model's object there to the "
                                       "labels as a new id (Ctrl+Z undoes it); the labels layer is set to pan/zoom "
                                       "so that clicks do not paint")
        self.accept = PushButton(text="Accept confident", enabled=False,
                                 tooltip="add every confident predicted object where nothing is painted, as new "
                                         "ids (one Ctrl+Z undoes them all); painted pixels are never changed")
        self.paint_next = PushButton(text="Show doubtful", enabled=False,
                                     tooltip="paint next: numbered boxes on the doubtful predicted objects, most doubtful "
                                             "first (the status line says why each is doubtful)")
        self.status = ui.wrapped_label(OFF_TEXT, small=True)  # the report of the plane, or why there is none
        self.status.native.setObjectName(ui.STATUS_NAME)
        super().__init__(widgets=[self.toggle, ui.button_row(self.accept, self.paint_next), self.status],
                         labels=False)
        self.margins = (0, 0, 0, 0)
        self.toggle.changed.connect(self._on_toggle)
        self.accept.changed.connect(lambda *_: self._attempt(self.accept_confident))
        self.paint_next.changed.connect(lambda *_: self._attempt(self.show_paint_next))
        stop_on_destroy(self.native, self._slot)
        self._refresh_timer.setParent(self.native)  # deleted with the dock: no refresh after the viewer closed
        self.native.destroyed.connect(lambda *_args, viewer=viewer, cb=self._on_mouse: _unhook(viewer, cb))
        self.native.destroyed.connect(lambda *_args: self._watch(None))
        viewer.dims.events.current_step.connect(self._on_edit)
        self.native.destroyed.connect(lambda *_args, dims=viewer.dims: _disconnect(dims.events.current_step,
                                                                                   self._on_edit))

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self._slot.busy

    def set_source(self, source: AssistSource | None, report: AssistReport | None = None,
                   why_not: str = OFF_TEXT) -> None:
        """A new training result (None: nothing to assist with, ``why_not`` says why)."""
        self._source = source
        self.report = report if source is not None else None
        self._assessed = None
        self._watch(source.labels if source is not None else None)
        if source is None:
            self.toggle.value = False
            self.status.value = why_not
        else:
            self.status.value = report.text() if report is not None else "click an unpainted object to add it"
        self.enable(True)

    def offer(self, prediction, assist: tuple | None, extras: tuple | None, plane: tuple[int, ...], image, labels,
              mode: str) -> None:
        """A training run's result: its prediction (None when there is none to show), its (report, flow
        errors) and (uncertainty, rows), the plane shown, the layers trained on and the label mode."""
        if prediction is None or not assist_applies(mode, prediction.kind):
            why = ("assisted annotation needs objects: a scribbles or classes model predicts classes; train in "
                   "the objects or instances mode" if mode in ("scribbles", "classes") else
                   "assisted annotation: no objects predicted (train in the objects or instances mode)")
            self.set_source(None, why_not=why)
            return
        report, errors = assist if assist is not None else (None, None)
        uncertainty = extras[0] if extras is not None else None
        self.set_source(AssistSource(prediction.labels, uncertainty, errors, plane, image, labels, mode), report)

    def enable(self, enabled: bool) -> None:
        """Enable what applies (``enabled`` False while the dock trains)."""
        has = enabled and self._source is not None
        self.toggle.enabled = has
        self.accept.enabled = has and not self.busy
        self.paint_next.enabled = has and self.report is not None and bool(self.report.paint_next)
        if not has and self.toggle.value:
            self.toggle.value = False

    def _attempt(self, action) -> None:
        try:
            action()
        except InputError as exc:
            self._tell(error_text(exc))

    def _tell(self, text: str) -> None:
        self.message = text
        self._say(text)

    def _set_report(self, report: AssistReport) -> None:
        self.report = report
        self.status.value = report.text()

    def _layers_or_raise(self) -> AssistSource:
        src = self._source
        if src is None:
            raise InputError("nothing to assist with: train in the objects or instances mode first")
        if src.labels not in self._viewer.layers:
            raise InputError(f"the labels layer '{src.labels.name}' trained on is closed")
        if getattr(src.labels, "multiscale", False):
            raise InputError(f"the labels layer '{src.labels.name}' is multiscale; assist writes to plain labels")
        if _layers.labels_shape(src.labels) != src.predicted.shape:
            raise InputError(f"the labels layer '{src.labels.name}' no longer has the image's shape "
                             f"{src.predicted.shape}")
        return src

    def _assess_args(self, src: AssistSource, plane: tuple[int, ...]) -> dict:
        unc = None if src.uncertainty is None else (src.uncertainty[plane] if plane else src.uncertainty)
        return {"first_id": src.first_id, "uncertainty": unc, "plane": plane,
                "flow_errors": src.flow_errors if plane == src.plane else None}

    def _shown_plane(self, src: AssistSource) -> tuple[int, ...]:
        lead = len(src.predicted.shape) - 2
        return _layers.current_plane(self._viewer, src.labels, "TZ"[-lead:] + "YX" if lead else "YX")

    # ------------------------------------------------------------------ keeping the report current
    def _watch(self, layer) -> None:
        """Refresh the report when ``layer`` is painted (napari's paint event) or its data replaced."""
        if self._hooked is not None:
            for emitter in (self._hooked.events.paint, self._hooked.events.set_data, self._hooked.events.thumbnail):
                _disconnect(emitter, self._on_edit)
        self._hooked = layer
        if layer is not None:
            # thumbnail: napari's undo and redo emit no paint event, but redraw the thumbnail
            for emitter in (layer.events.paint, layer.events.set_data, layer.events.thumbnail):
                emitter.connect(self._on_edit)

    def _on_edit(self, *_event) -> None:
        if self._source is not None:
            self._refresh_timer.start()  # restarted by every edit: one refresh when the user pauses

    def refresh_report(self) -> None:
        """Recompute the report of the shown plane from the labels as they are now (in a worker).

        Runs after the user paints, undoes, redoes or moves to another plane; skipped when nothing
        changed since the last report, and postponed while another assist job runs.
        """
        src = self._source
        if src is None or src.labels not in self._viewer.layers:
            return
        if self.busy:
            self._refresh_timer.start()
            return
        try:
            src = self._layers_or_raise()
        except InputError as exc:
            self.status.value = error_text(exc)
            return
        plane = self._shown_plane(src)
        painted = np.array(src.labels.data[plane] if plane else src.labels.data)
        if self._assessed is not None and self._assessed[0] == plane and np.array_equal(self._assessed[1], painted):
            return
        predicted = src.predicted[plane] if plane else src.predicted
        assess = self._assess_args(src, plane)
        self._assessed = (plane, painted)
        self._slot.start(lambda stop: _assess_job(predicted, painted, assess),
                         on_result=lambda report: self._refreshed(src, report),
                         on_error=lambda exc: self._tell(error_text(exc)), on_done=lambda: self.enable(True))

    def _note_assessed(self, src: AssistSource, plane: tuple[int, ...]) -> None:
        """The report just set is the labels' own: the refresh our write triggers need not recompute it."""
        data = src.labels.data
        self._assessed = (plane, np.array(data[plane] if plane else data))

    def _refreshed(self, src: AssistSource, report: AssistReport) -> None:
        if src is self._source:
            self._set_report(report)
            self.enable(True)

    # ------------------------------------------------------------------ clicking
    def _on_toggle(self, on: bool) -> None:
        _unhook(self._viewer, self._on_mouse)
        if not on:
            return
        self._viewer.mouse_drag_callbacks.append(self._on_mouse)
        src = self._source
        if src is not None and src.labels in self._viewer.layers:
            src.labels.mode = "pan_zoom"  # a click must add an object, not paint a dot
        self._tell("assist on: click an unpainted object in the viewer to add it as a new object; "
                   "Ctrl+Z (labels layer selected) undoes it")

    def _on_mouse(self, _viewer, event):
        """A click (press and release without a drag) adds the object under it; drags pan as usual."""
        if getattr(event, "button", 1) not in (1, None):
            return
        active = self._viewer.layers.selection.active
        if getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return  # the user is painting, drawing or transforming: not ours
        position = tuple(event.position)
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self._attempt(lambda: self.add_object_at_world(position))

    def add_object_at_world(self, position) -> None:
        """Add the predicted object at a viewer (world) position to the labels trained on."""
        src = self._layers_or_raise()
        index = np.round(np.asarray(src.labels.world_to_data(position), float)).astype(int)
        self.add_object_at(tuple(int(i) for i in index))

    def add_object_at(self, index: tuple[int, ...]) -> None:
        """Add the predicted object at ``index`` (labels data coordinates, plane first) in a worker."""
        src = self._layers_or_raise()
        if self.busy:
            raise InputError("still adding the last object; click again in a moment")
        index = tuple(index)[-src.predicted.ndim:]
        plane, point = index[:-2], index[-2:]
        shape = src.predicted.shape
        if any(not 0 <= i < n for i, n in zip(index, shape, strict=True)):
            raise InputError("the click is outside the image")
        predicted = src.predicted[plane] if plane else src.predicted
        painted = np.array(src.labels.data[plane] if plane else src.labels.data)
        # the two quick answers on the main thread, so that a miss says why at once
        if painted[point] != 0:
            raise InputError(f"that pixel is already painted (value {int(painted[point])}); assist adds objects "
                             "only where nothing is painted")
        if predicted[point] == 0:
            raise InputError("the model predicts background there: no object to add")
        assess = self._assess_args(src, plane)
        self._slot.start(lambda stop: _pick_job(predicted, painted, point, assess),
                         on_result=lambda out: self._add_picked(src, plane, *out),
                         on_error=lambda exc: self._tell(error_text(exc)), on_done=lambda: self.enable(True))
        self.enable(True)

    def _add_picked(self, src: AssistSource, plane, ys, xs, report: AssistReport) -> None:
        new_id, written = self._write(src, plane, ys, xs, np.zeros(ys.size, np.int64))
        if not written:
            self._tell("the object's pixels were painted meanwhile: nothing added")
            return
        self._set_report(report)
        self._note_assessed(src, plane)
        self._tell(f"added object {new_id} ({written} px); Ctrl+Z on '{src.labels.name}' undoes it")

    # ------------------------------------------------------------------ accept and report
    def accept_confident(self) -> None:
        """Add every confident predicted object of the shown plane (worker; one undo step)."""
        src = self._layers_or_raise()
        plane = self._shown_plane(src)
        predicted = src.predicted[plane] if plane else src.predicted
        painted = np.array(src.labels.data[plane] if plane else src.labels.data)
        assess = self._assess_args(src, plane)
        self._tell("finding the confident objects...")
        self._slot.start(lambda stop: _accept_job(predicted, painted, assess),
                         on_result=lambda out: self._add_accepted(src, plane, *out),
                         on_error=lambda exc: self._tell(error_text(exc)), on_done=lambda: self.enable(True))
        self.enable(True)

    def _add_accepted(self, src, plane, ys, xs, order, n: int, report: AssistReport) -> None:
        if n == 0:
            self._set_report(report)
            self._tell("no confident object to add on this plane")
            return
        first, written = self._write(src, plane, ys, xs, order)
        self._set_report(report)
        self._note_assessed(src, plane)
        self._tell(f"added {n} confident objects (ids {first}-{first + n - 1}, {written} px); one Ctrl+Z on "
                   f"'{src.labels.name}' undoes them")

    def _write(self, src: AssistSource, plane, ys, xs, order) -> tuple[int, int]:
        """Write objects (``order`` 0, 1, ... per object) as new ids into the labels; (first id, pixels written).

        Pixels painted since the worker's copy are left alone; ``data_setitem``
        records the whole write as one undo step.
        """
        layer = src.labels
        if layer not in self._viewer.layers:
            raise InputError(f"the labels layer '{layer.name}' was closed")
        data = layer.data
        current = data[plane] if plane else data
        free = current[ys, xs] == 0
        ys, xs, order = ys[free], xs[free], order[free]
        first = max(int(data.max()) + 1, src.first_id)
        if ys.size == 0:
            return first, 0
        if first + int(order.max()) > np.iinfo(data.dtype).max:
            raise InputError(f"the labels layer '{layer.name}' ({data.dtype}) has no room for more ids")
        index = tuple(np.full(ys.size, p, np.int64) for p in plane) + (ys, xs)
        layer.data_setitem(index, (order + first).astype(data.dtype))
        return first, int(ys.size)

    def show_paint_next(self) -> None:
        """Numbered "paint next" boxes on the doubtful objects, in ``"<image> paint next"``."""
        src = self._layers_or_raise()
        if self.report is None or not self.report.paint_next:
            raise InputError("no doubtful object to show")
        rows = self.report.paint_next
        _layers.show_regions(self._viewer, rows, f"{src.image.name} paint next", like=src.image,
                             ndim=src.predicted.ndim)
        counts: dict[str, int] = {}
        for row in rows:
            for reason in row["why"].split(", "):
                counts[reason] = counts.get(reason, 0) + 1
        self._tell(f"paint next: {len(rows)} boxes on doubtful objects, most doubtful first ("
                   + ", ".join(f"{reason} {n}" for reason, n in counts.items()) + ")")


def _disconnect(emitter, callback) -> None:
    with contextlib.suppress(RuntimeError, TypeError, ValueError):  # already gone, or the viewer is closing
        emitter.disconnect(callback)


def _unhook(viewer, callback) -> None:
    try:
        callbacks = viewer.mouse_drag_callbacks
        if callback in callbacks:
            callbacks.remove(callback)
    except RuntimeError:  # the viewer is closing
        pass
