"""Helpers shared by the widget tests (imported as a plain module)."""

from __future__ import annotations

import threading

import numpy as np

#: generous: a CPU training step on 2 cores can take a second or two under load
WAIT_MS = 120_000

TINY = {"encoder": "resnet18", "patch": 64, "batch_size": 2, "device": "cpu", "pretrained": None}


def set_tiny_training(widget, save_to, *, epochs=1, steps=2):
    """Set a TrainWidget's controls for a run of a few seconds on the CPU."""
    widget._encoder.native.setEditText(TINY["encoder"])
    widget._patch.value = str(TINY["patch"])
    widget._batch.value = str(TINY["batch_size"])
    widget._device.value = "cpu"
    widget._epochs.value = epochs
    widget._steps.value = steps
    widget._save_to.value = save_to


def click(button) -> None:
    """Press a magicgui PushButton as a user would."""
    button.native.click()


def dock(viewer, name: str):
    """Open one of our widgets through the plugin manifest; returns the widget."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-seglab", name)
    return widget


def image_and_scribbles(viewer, tiny_nuclei, **image_kwargs):
    image, _instances, scribbles = tiny_nuclei
    image_layer = viewer.add_image(image, name="cells", **image_kwargs)
    labels_layer = viewer.add_labels(np.asarray(scribbles), name="paint",
                                     **{k: v for k, v in image_kwargs.items() if k in ("scale", "translate")})
    return image_layer, labels_layer


class Guarded:
    """An array-like that serves slices (numpy) and raises when converted whole."""

    def __init__(self, array: np.ndarray):
        self._array = array
        self.shape, self.dtype, self.ndim, self.size = array.shape, array.dtype, array.ndim, array.size
        self.worker_reads: list[int] = []  # pixels of each read from other threads than the GUI's (the prediction's)
        self.gate = None  # called with worker_reads before each such read

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if threading.current_thread() is not threading.main_thread():
            part = np.asarray(self._array[index])
            self.worker_reads.append(part.size)
            if self.gate is not None:
                self.gate(len(self.worker_reads))
            return part
        return np.asarray(self._array[index])

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole layer was converted to numpy")
