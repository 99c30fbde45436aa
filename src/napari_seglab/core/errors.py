"""Exceptions that carry a message meant for the user."""


class SeglabError(Exception):
    """Base class for errors napari-seglab raises on purpose."""


class InputError(SeglabError, ValueError):
    """Bad user input (file, image, labels, model, option).

    The message is one sentence naming the problem and, where possible, the fix.
    The CLI prints it on one line and exits with code 2; widgets show it as a
    napari notification.
    """
