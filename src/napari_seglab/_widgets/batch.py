"""BatchWidget: segment a folder of images with a checkpoint (locally or on a Dask cluster); large files go
block by block in the core, and their OME-Zarr results open lazily."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from ..core.device import DEVICES
from ..core.errors import InputError
from ..core.events import FileDone, Message
from ..core.predict import BatchOptions
from ..core.settings import settings_of
from . import _common as ui
from . import _layout
from ._worker import JobSlot, error_text, report_error, stop_on_destroy

if TYPE_CHECKING:
    import napari

#: failed files listed in the dock (the manifest has them all)
MAX_FAILURES_SHOWN = 8


def failure_lines(failures: list[FileDone], limit: int = MAX_FAILURES_SHOWN) -> str:
    """One line per failed file, ``name: reason`` (rich text), at most ``limit`` of them."""
    import html

    lines = [f"<b>{html.escape(Path(done.path).name)}</b>: {html.escape(str(done.error or 'failed'))}"
             for done in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"... and {len(failures) - limit} more (see manifest.csv)")
    return "<br>".join(lines)


def batch_job(options: dict, stop: threading.Event):
    """Run :func:`napari_seglab.core.batch.iter_run_batch` with ``options``; returns its summary."""
    try:
        from ..core.batch import iter_run_batch
    except ImportError as exc:
        raise InputError(f"batch processing is unavailable in this installation ({exc})") from exc
    return (yield from iter_run_batch(**options, stop=stop))


def labels_output(done: FileDone) -> str | None:
    """The label image a finished file produced (``<stem>_labels.tif``), if any."""
    outputs = done.outputs or {}
    if outputs.get("labels"):
        return str(outputs["labels"])
    for value in outputs.values():
        if str(value).endswith("_labels.tif"):
            return str(value)
    return None


class BatchWidget(Container):
    """Dock widget: run a model over every matching file of a folder, then open results."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._slot = JobSlot()
        self.results: list[FileDone] = []
        self.failures: list[FileDone] = []
        self.summary = None

        self._input = ui.file_picker("input folder", "d", tooltip="folder with the images to segment")
        self._output = ui.file_picker("output folder", "d", tooltip="where labels, tables and the manifest go")
        self._model = ui.file_picker("model file", "r", "*.pt")
        opt = settings_of(BatchOptions)
        self._pattern = LineEdit(label=opt["pattern"].label, value="*.tif", tooltip=opt["pattern"].text)
        self._device = ui.choice_combo("device", DEVICES, "auto", opt["device"].text)
        # a spin box has no "auto": here 0 means automatic (the core's None), not "in this process"
        self._workers = SpinBox(label=opt["workers"].label, value=0, min=0, max=256,
                                tooltip=f"local worker processes; 0 = automatic: {opt['workers'].auto}")
        self._scheduler = LineEdit(label="scheduler", value="",
                                   tooltip="a Dask scheduler address (tcp://host:8786); empty = local worker processes; sync = inside napari")
        self._scheduler.native.setPlaceholderText("local; or tcp://host:8786, or sync")
        self._recursive = CheckBox(text=opt["recursive"].label, value=False, tooltip=opt["recursive"].text)
        self._probabilities = CheckBox(text=opt["probabilities"].label, value=False, tooltip=opt["probabilities"].text)
        self._measurements = CheckBox(text="measure objects (CSV)", value=True)
        self._skip = CheckBox(text=opt["skip_existing"].label, value=False, tooltip=opt["skip_existing"].text)
        self._volume = CheckBox(text=opt["volume"].label, value=False, tooltip=opt["volume"].text)
        self._anisotropy = FloatSpinBox(label="anisotropy", value=0.0, min=0.0, max=float(opt["anisotropy"].high),
                                        step=0.5, tooltip=opt["anisotropy"].text + "; 0 = each file's pixel size, "
                                        "else 1")
        self._controls = ui.RunControls("Run", self._on_run, self._on_stop)
        self._summary = ui.wrapped_label("", small=True)
        self._summary.native.setObjectName(ui.STATUS_NAME)
        self._failed = ui.wrapped_label("", small=True)
        self._failed.visible = False
        self._result_choice = ComboBox(label="result", choices=self._result_choices, nullable=True)
        ui._elide_combo(self._result_choice)
        self._open = PushButton(text="Open result")
        self._open.changed.connect(self._on_open)

        files = ui.form("Files", [self._input, self._output, self._model, self._pattern], [self._recursive])
        run = ui.form("Run", [self._device, self._workers, self._scheduler, self._anisotropy],
                      [self._probabilities, self._measurements, self._skip, self._volume])
        results = Container(widgets=[self._result_choice, self._open], layout="horizontal", labels=False)
        results.margins = (0, 0, 0, 0)
        done = ui.form("Results", [], [self._summary, self._failed, results])
        ui.align_labels([files, run])
        self._inputs = [files, run]
        settings = _layout.Scrolled([files, run])
        super().__init__(widgets=[_layout.dock_body([settings, self._controls, done])], labels=False)
        self.margins = (0, 0, 0, 0)
        self.reset_choices()
        stop_on_destroy(self.native, self._slot)
        _layout.tabify_when_docked(self)

    @property
    def busy(self) -> bool:
        return self._slot.busy

    def batch_options(self) -> dict:
        """Keyword arguments for ``iter_run_batch`` from the controls (InputError when incomplete)."""
        input_dir, output_dir, model = (ui.path_or_none(w) for w in (self._input, self._output, self._model))
        if input_dir is None or not input_dir.is_dir():
            raise InputError("choose an existing input folder")
        if output_dir is None:
            raise InputError("choose an output folder")
        if model is None:
            raise InputError("choose a model file (.pt)")
        return {
            "model": str(model), "input_dir": str(input_dir), "output_dir": str(output_dir),
            "pattern": self._pattern.value.strip() or "*.tif", "recursive": self._recursive.value,
            "probabilities": self._probabilities.value, "measurements": self._measurements.value,
            "skip_existing": self._skip.value, "workers": self._workers.value or None,
            "scheduler": self._scheduler.value.strip() or None, "device": self._device.value,
            "volume": self._volume.value, "anisotropy": float(self._anisotropy.value) or None,
        }

    def _result_choices(self, _widget=None):
        return [(f"{Path(d.path).name} ({d.status})", d) for d in self.results]

    def _on_run(self) -> None:
        self._controls.attempt(self._start)

    def _start(self) -> None:
        options = self.batch_options()
        self.results = []
        self.failures = []
        self.summary = None
        self._result_choice.reset_choices()
        self._summary.value = ""
        self._failed.value = ""
        self._failed.visible = False
        self._controls.set_fraction(0)
        self._controls.say("starting...")
        self._set_busy(True)
        self._slot.start(lambda stop: batch_job(options, stop), on_event=self._on_event,
                         on_result=self._on_result, on_error=lambda exc: self._controls.say(error_text(exc)),
                         on_done=lambda: self._set_busy(False))

    def _on_stop(self) -> None:
        self._controls.stop(self._slot, "the files in progress")

    def _set_busy(self, busy: bool) -> None:
        self._controls.set_busy(busy, self._inputs)

    def _on_event(self, event) -> None:
        if isinstance(event, FileDone):
            self._controls.set_fraction(event.index / max(1, event.total))
            note = f": {event.error}" if event.error else ""
            self._controls.say(f"{event.index}/{event.total} {Path(event.path).name} {event.status}{note}")
            if event.status == "failed":
                self.failures.append(event)
                self._failed.value = failure_lines(self.failures)
                self._failed.visible = True
            if event.status == "ok" or (event.status == "skipped" and labels_output(event)):
                self.results.append(event)
                self._result_choice.reset_choices()
                self._result_choice.value = event
        elif isinstance(event, Message):
            self._controls.say(event.text, event.level)

    def _on_result(self, summary) -> None:
        self.summary = summary
        self._controls.set_fraction(1.0)
        self._controls.say("done")
        self._summary.value = (f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped of "
                               f"{summary.total} in {summary.seconds:.1f} s"
                               + (" (failed files below)" if self.failures else "") + "\n"
                               f"outputs: {summary.output_dir}\nmanifest: {os.path.basename(summary.manifest)}, "
                               f"summary: {os.path.basename(summary.summary_csv)}")

    def _on_open(self, *_args) -> None:
        done = self._result_choice.value
        if done is None:
            return
        try:
            self.open_result(done)
        except InputError as exc:
            report_error(exc)

    def open_result(self, done: FileDone) -> None:
        """Load a finished file's input image and its labels output into the viewer.

        A block-wise file (its labels an OME-Zarr) opens lazily: neither its input nor its labels
        are read whole.
        """
        from ..core.io import is_zarr_path, read_image, read_labels

        out = labels_output(done)
        if out and is_zarr_path(out):
            self._open_lazily(Path(done.path), Path(out))
            return

        image = read_image(done.path)
        stem = Path(done.path).stem
        channels = image.axes.endswith("C")
        spatial = image.axes[:-1] if channels else image.axes
        names = {"axis_labels": tuple(spatial.lower())}  # t, z, y, x rather than napari's -3, -2, -1
        if channels and image.data.shape[-1] in (3, 4):
            self._viewer.add_image(image.data, name=stem, rgb=True, **names)
        elif channels:
            self._viewer.add_image(image.data, name=stem, channel_axis=-1, **names)
        else:
            self._viewer.add_image(image.data, name=stem, **names)
        if out and Path(out).is_file():
            self._viewer.add_labels(read_labels(out), name=f"{stem} labels", **names)

    def _open_lazily(self, source: Path, labels: Path) -> None:
        """A block-wise file's input (OME-Zarr levels, or the TIFF's lazy store) and its labels store, lazily."""
        from .._reader import read_ome_zarr
        from ..core.io import is_zarr_path, open_lazy

        stem = source.name.split(".")[0]
        found = [(data, kwargs) for data, kwargs, kind in read_ome_zarr(labels) if kind == "labels"]
        place = {k: v for k, v in (found[0][1] if found else {}).items() if k in ("scale", "translate")}
        if is_zarr_path(source):
            for data, kwargs, kind in read_ome_zarr(source):
                if kind == "image":
                    self._viewer.add_image(data, **{**kwargs, "name": kwargs.get("name") or stem})
        else:
            lazy = open_lazy(source)
            if lazy.stored in ("YX", "YXC"):  # shown as stored (placed as its labels); other layouts would need a copy
                rgb = lazy.stored == "YXC" and lazy.shape[2] in (3, 4)
                self._viewer.add_image(lazy.array, name=stem, rgb=rgb, **place)
        for data, kwargs in found:
            self._viewer.add_labels(data, **{**kwargs, "name": f"{stem} labels"})
