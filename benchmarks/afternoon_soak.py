"""An afternoon in one viewer: train -> predict -> correct -> retrain cycles, with layers added and removed.

Run under a display (``xvfb-run -a python benchmarks/afternoon_soak.py [CYCLES]``, 30 by default). Each
cycle, in one napari viewer: the Train dock trains a tiny U-Net for one step, the Predict dock predicts
an image layer added for the cycle (removed afterwards, with its outputs), "Correct prediction" makes
the editable layer, a few pixels are painted and Continue retrains from the last model. Resident
memory, open file handles, threads (Python's and the OS's) and the layer count are read after every
cycle; the growth ratio compares the last cycle with the third (the first two warm caches: torch's
allocator, the model cache, Qt's layer controls). At the end the docks are closed with a training
run going, and the run must stop with its dock. The growth ratio of resident memory is printed last.

``soak(viewer, cycles, folder, wait)`` is the driver; tests/widgets/test_afternoon_soak.py runs a
few cycles of it through pytest-qt.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: the cycle whose figures are the baseline (0-based): the first cycles warm caches
BASELINE_CYCLE = 2


def figures(viewer) -> dict:
    """Resident memory (bytes), open file handles, Python and OS threads, layers: now."""
    import psutil

    gc.collect()
    proc = psutil.Process()
    return {"rss": proc.memory_info().rss, "files": len(os.listdir("/proc/self/fd")) if os.path.isdir(
        "/proc/self/fd") else proc.num_fds(), "threads": threading.active_count(), "os_threads": proc.num_threads(),
        "layers": len(viewer.layers)}


def _dock_of(widget):
    from qtpy.QtWidgets import QDockWidget

    parent = widget.native.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def soak(viewer, cycles: int, folder: Path, wait: Callable[[Callable[[], bool]], None],
         report: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run ``cycles`` train -> predict -> correct -> retrain cycles in ``viewer``; returns the figures per cycle.

    ``wait(condition)`` returns once ``condition()`` is true (pytest-qt's ``waitUntil``, or :func:`spin`).
    Ends by closing the Train dock during a run: the run must stop (checked with ``wait``).
    """
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    image, instances = make_nuclei((64, 96), seed=2)
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.asarray(make_scribbles(instances, seed=2)), name="paint")
    _dock, train = viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    _dock, predict = viewer.window.add_plugin_dock_widget("napari-seglab", "Predict")
    train._encoder.native.setEditText("resnet18")
    train._patch.value, train._batch.value, train._device.value = "64", "2", "cpu"
    train._epochs.value, train._steps.value, train._preview.value = 1, 1, 0
    predict._device.value = "cpu"
    seen = []
    for cycle in range(cycles):
        train._labels_combo.value = viewer.layers["paint"]
        train._save_to.value = folder / "model.pt"
        train._controls.run_button.native.click()
        wait(lambda: not train.busy)
        # a prediction on a layer added for this cycle, then taken away with what the prediction made
        extra = viewer.add_image(np.ascontiguousarray(np.roll(image, 7 * cycle, axis=1)), name=f"extra {cycle}")
        predict.set_checkpoint(folder / "model.pt")
        predict._image.value = extra
        predict._controls.run_button.native.click()
        wait(lambda: not predict.busy)
        for layer in [lay for lay in viewer.layers if lay.name.startswith(f"extra {cycle}")]:
            viewer.layers.remove(layer)
        # correct the Train dock's own prediction and continue from the last model
        train._correct.native.click()
        corrected = viewer.layers["cells corrected"]
        corrected.data[:8, :8] = 2
        corrected.data[-8:, -8:] = 1
        train._save_to.value = folder / "model.pt"
        train._continue.native.click()
        wait(lambda: not train.busy)
        now = figures(viewer)
        seen.append(now)
        if report is not None:
            report(cycle, now)
    # the docks' X during a run: the run stops with its dock, its thread ends
    train._labels_combo.value = viewer.layers["paint"]
    train._steps.value, train._epochs.value = 1000, 1
    train._controls.run_button.native.click()
    wait(lambda: train.busy)
    viewer.window.remove_dock_widget(_dock_of(train))
    wait(lambda: not train.busy)
    viewer.window.remove_dock_widget(_dock_of(predict))
    return seen


def growth(seen: list[dict]) -> dict:
    """Last cycle over the baseline cycle, per figure (threads, files and layers as differences too)."""
    base = seen[min(BASELINE_CYCLE, len(seen) - 1)]
    last = seen[-1]
    return {key: last[key] / base[key] if base[key] else float("nan") for key in base} | {
        f"{key}_added": last[key] - base[key] for key in ("files", "threads", "os_threads", "layers")}


def spin(condition: Callable[[], bool], timeout: float = 300.0) -> None:
    """Process Qt events until ``condition()`` holds (no pytest-qt outside the tests)."""
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the viewer did not finish in time")
        QApplication.processEvents()
        time.sleep(0.01)


def main(cycles: int = 30) -> None:
    import napari

    viewer = napari.Viewer(show=False)
    with tempfile.TemporaryDirectory() as folder:
        seen = soak(viewer, cycles, Path(folder), spin,
                    report=lambda i, f: print(f"cycle {i + 1}: RSS {f['rss'] / 2**20:.0f} MiB, {f['files']} files, "
                                              f"{f['threads']} threads ({f['os_threads']} OS), {f['layers']} layers",
                                              flush=True))
        threads_after = threading.active_count()
    viewer.close()
    g = growth(seen)
    print(f"after the docks closed: {threads_after} Python threads")
    print(f"files +{g['files_added']}, threads +{g['threads_added']} (OS +{g['os_threads_added']}), "
          f"layers +{g['layers_added']} from cycle {BASELINE_CYCLE + 1} to {len(seen)}")
    print(f"RSS growth ratio over {len(seen)} cycles: {g['rss']:.3f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
