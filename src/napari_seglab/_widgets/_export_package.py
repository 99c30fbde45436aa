"""The Train dock's "Export for bioimage.io" button: the kept model as a tested bioimage.io package.

The export and bioimage.io's test run in the dock's worker
(:func:`napari_seglab.core.models.iter_export_bioimageio`); the package is written beside the model
file (``<model>.zip``, numbered rather than written over), its test input cut from the plane shown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from magicgui.widgets import PushButton

from ..core.errors import InputError
from ..core.events import Message
from ._models import unused_path
from ._worker import JobSlot, error_text

TOOLTIP = ("write the kept model as a bioimage.io package (<model>.zip beside it), tested by bioimage.io's own "
           "test before it is written (needs pip install 'napari-seglab[bioimageio]')")


class PackageExport:
    """A button and its job: ``start(checkpoint, plane)`` exports; ``say`` shows progress and the verdict."""

    def __init__(self, slot: JobSlot, say: Callable[[str], None], set_busy: Callable[[bool], None]):
        self.button = PushButton(text="Export for bioimage.io", enabled=False, tooltip=TOOLTIP)
        self._slot, self._say, self._set_busy = slot, say, set_busy
        self.last_path: Path | None = None

    def start(self, checkpoint: Path | None, plane: np.ndarray | None) -> None:
        """Export ``checkpoint`` (InputError when there is none) with ``plane`` as the test image."""
        from ..core.models import iter_export_bioimageio

        if checkpoint is None or not Path(checkpoint).is_file():
            raise InputError("no model file to export: train first, with a model file to save to")
        out = unused_path(Path(checkpoint).with_suffix(".zip"), set())
        self._say(f"exporting {Path(checkpoint).name} as a bioimage.io package...")
        self._set_busy(True)
        self._slot.start(lambda stop: iter_export_bioimageio(checkpoint, out, image=plane),
                         on_event=self._on_event, on_result=self._on_result,
                         on_error=lambda exc: self._say(error_text(exc)), on_done=lambda: self._set_busy(False))

    def _on_event(self, event) -> None:
        if isinstance(event, Message):
            self._say(event.text)

    def _on_result(self, result) -> None:
        self.last_path = result.path
        self._say(f"{result.verdict.line}; package written to {result.path}")
