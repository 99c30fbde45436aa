"""The core never imports the GUI stack."""

from __future__ import annotations

import subprocess
import sys

CHECK = (
    "import sys\n"
    "import napari_seglab.core.train, napari_seglab.core.predict, napari_seglab.core.io\n"
    "gui = sorted({m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'magicgui', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'})\n"
    "assert not gui, gui\n"
)


def test_core_does_not_import_napari_or_qt():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
