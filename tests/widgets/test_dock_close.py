"""Closing a dock with its X stops its running job: no worker survives its dock.

The afternoon itself (30 train -> predict -> correct -> retrain cycles in one viewer, with
resident memory, handles, threads and layers per cycle) is ``benchmarks/afternoon_soak.py``: it
takes minutes per few cycles on 2 cores, too long for the test suite. It ends with this check too.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest
from widget_helpers import WAIT_MS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "afternoon_soak.py"


def _driver():
    spec = importlib.util.spec_from_file_location("afternoon_soak", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Train", "Predict"])
def test_closing_a_dock_with_its_x_stops_its_running_job(make_napari_viewer, qtbot, tmp_path, tiny_model, name):
    """napari's X takes the widget out of its dock (it is not destroyed): the job stops all the same."""
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    driver = _driver()
    viewer = make_napari_viewer()
    image, instances = make_nuclei((512, 512), seed=2)
    viewer.add_image(image, name="cells")
    viewer.add_labels(make_scribbles(instances, seed=2), name="paint")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-seglab", name)
    if name == "Train":
        widget._encoder.native.setEditText("resnet18")
        widget._patch.value, widget._batch.value, widget._device.value = "64", "2", "cpu"
        widget._epochs.value, widget._steps.value, widget._preview.value = 1, 100_000, 0
        widget._save_to.value = tmp_path / "m.pt"
    else:
        widget.set_checkpoint(tiny_model)
        widget._device.value, widget._tile.value = "cpu", 64  # many tiles: time to close the dock
    threads_before = threading.active_count()
    widget._controls.run_button.native.click()
    qtbot.waitUntil(lambda: widget.busy, timeout=WAIT_MS)
    viewer.window.remove_dock_widget(driver._dock_of(widget))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: threading.active_count() <= threads_before, timeout=WAIT_MS)


QUIT_AT_ONCE = """
import atexit

import napari
from qtpy.QtWidgets import QApplication

from napari_seglab._widgets import _common

# registered first, so it runs last: after every exit handler the plugin registers
atexit.register(lambda: print("warm-up running at exit:", _common._warm_up.is_alive(), flush=True))
viewer = napari.Viewer(show=False)
viewer.window.add_plugin_dock_widget("napari-seglab", "Train")  # starts the warm-up imports
QApplication.processEvents()
viewer.close()
print("closed", flush=True)
"""


def test_napari_quits_cleanly_right_after_the_train_dock_opens(tmp_path):
    """The dock's warm-up thread (imports, one tiny training step) is waited for at exit: quitting while it
    runs used to abort the process in torch's C++ ("terminate called without an active exception")."""
    import os
    import subprocess
    import sys

    # two torch threads: the intra-op pool's native threads are what the early exit tore down
    env = {**os.environ, "NAPARI_CONFIG": str(tmp_path / "settings.yaml"), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", QUIT_AT_ONCE], capture_output=True, text=True, timeout=300,
                          env=env)
    assert "closed" in done.stdout, done.stderr[-2000:]
    assert "warm-up running at exit: False" in done.stdout, done.stdout
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
