"""napari dock widgets (Train, Predict, Batch, Evaluate) declared in ``napari.yaml``.

The widgets are thin: they copy layer data, run a :mod:`napari_seglab.core`
generator in a thread worker (:mod:`._worker`) and turn its events into a
progress bar, status text and layers (:mod:`napari_seglab._layers`). The
classes are imported lazily so that ``import napari_seglab._widgets`` stays
cheap.

napari, magicgui and Qt come with the ``[napari]`` extra; without them,
importing this package (as napari does for a dock widget) raises one
:class:`ModuleNotFoundError` that says how to install them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

__all__ = ["BatchWidget", "EvaluateWidget", "PredictWidget", "TrainWidget"]

INSTALL_HINT = 'pip install "napari-seglab[napari]"'
_GUI_PACKAGES = ("napari", "magicgui", "qtpy")
_QT_BINDINGS = ("PyQt6", "PyQt5", "PySide6", "PySide2")


def _check_gui_stack() -> None:
    """Fail with one clear line when the ``[napari]`` extra is not installed.

    Without this, a headless install would fail on whichever of napari,
    magicgui or qtpy a widget module happens to import first, or with qtpy's
    long "no Qt bindings" error.
    """
    missing = [name for name in _GUI_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"the SegLab napari widgets need {', '.join(missing)}, which this install lacks: {INSTALL_HINT}",
            name=missing[0])
    if not any(importlib.util.find_spec(name) is not None for name in _QT_BINDINGS):
        raise ModuleNotFoundError(
            f"the SegLab napari widgets need a Qt binding (PyQt6, PyQt5, PySide6 or PySide2): {INSTALL_HINT}",
            name="PyQt6")


_check_gui_stack()


def _preload_triton() -> None:
    """Load Triton's LLVM with its own symbols first (Linux; no-op elsewhere).

    torchvision imports ``torch._dynamo``, which imports Triton when it is
    installed (it comes with CUDA builds of torch). When the viewer's OpenGL
    driver is Mesa's LLVM-based llvmpipe or radeonsi, loading ``libtriton.so``
    afterwards binds its bundled LLVM to Mesa's and segfaults. Opening the
    library with ``RTLD_DEEPBIND`` first keeps the two apart; the later Python
    import reuses this handle.
    """
    if not sys.platform.startswith("linux") or "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return
    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec("triton")
        if spec is None or not spec.origin:
            return
        library = os.path.join(os.path.dirname(spec.origin), "_C", "libtriton.so")
        if os.path.isfile(library):
            import ctypes

            ctypes.CDLL(library, mode=os.RTLD_NOW | os.RTLD_DEEPBIND)


_preload_triton()


def __getattr__(name: str):
    if name == "TrainWidget":
        from .train import TrainWidget

        return TrainWidget
    if name == "PredictWidget":
        from .predict import PredictWidget

        return PredictWidget
    if name == "BatchWidget":
        from .batch import BatchWidget

        return BatchWidget
    if name == "EvaluateWidget":
        from .evaluate import EvaluateWidget

        return EvaluateWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
