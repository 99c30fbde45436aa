"""Exceptions that carry a message meant for the user, and the input check every stage shares."""

import numpy as np


class SeglabError(Exception):
    """Base class for errors napari-seglab raises on purpose."""


class InputError(SeglabError, ValueError):
    """Bad user input (file, image, labels, model, option).

    The message is one sentence naming the problem and, where possible, the fix.
    The CLI prints it on one line and exits with code 2; widgets show it as a
    napari notification.
    """


def check_label_image(labels, name: str = "labels") -> np.ndarray:
    """``labels`` as an array of non-negative whole numbers (a bool mask becomes int32); InputError otherwise."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer label image, got dtype {arr.dtype}.")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} must not contain negative values.")
    return arr
