"""Progress events yielded by the long-running core generators.

A core function that runs long (training, tiled prediction, batch jobs) is a
generator: it yields these small frozen dataclasses and returns its result.
The same generator drives a napari thread worker, the CLI progress display and
the tests; :func:`drive` runs one to its end (the blocking twins in
:mod:`napari_seglab.core.api` are built on it). Every level speaks this protocol: a tiled plane
yields :class:`TileDone`, a whole image re-yields them with its plane index,
a batch yields :class:`FileDone`. A generator whose ``stop`` event was set
raises :class:`Stopped` below the level that owns a partial result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """A line of text for the user (a status bar, a log)."""

    text: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class TrainStep:
    """One optimiser step finished."""

    step: int
    total_steps: int | None
    epoch: int
    loss: float
    lr: float
    elapsed: float
    time_limit: float | None = None

    @property
    def fraction(self) -> float | None:
        """Fraction of the job done, from steps or from the time budget."""
        parts = []
        if self.total_steps:
            parts.append(self.step / self.total_steps)
        if self.time_limit:
            parts.append(self.elapsed / self.time_limit)
        return min(1.0, max(parts)) if parts else None


@dataclass(frozen=True)
class EpochEnd:
    """One epoch finished; validation figures when a hold-out exists."""

    epoch: int
    epochs: int | None
    train_loss: float
    val_loss: float | None = None
    val_dice: float | None = None
    per_class_dice: tuple[float, ...] = ()
    elapsed: float = 0.0
    is_best: bool = False


@dataclass(frozen=True)
class CheckpointSaved:
    """The best (or last) checkpoint was written atomically."""

    path: str
    epoch: int
    metric: float | None
    kind: str = "best"  # "best" | "last"


@dataclass(frozen=True)
class Preview:
    """A live prediction of one plane during training.

    ``probabilities`` is float32 (K, Y, X); ``labels`` is (Y, X) int32.
    """

    step: int
    labels: Any
    probabilities: Any = None
    plane: int | None = None


@dataclass(frozen=True)
class TileDone:
    """One tile of one plane predicted."""

    tile: int
    tiles: int
    plane: int = 0
    planes: int = 1

    @property
    def fraction(self) -> float:
        return (self.plane * self.tiles + self.tile) / max(1, self.planes * self.tiles)


@dataclass(frozen=True)
class BlockDone:
    """One block of a block-wise prediction done (``stage``: "predict", then "renumber" in a last pass)."""

    block: int
    blocks: int
    stage: str = "predict"

    @property
    def fraction(self) -> float:
        return self.block / max(1, self.blocks)


@dataclass(frozen=True)
class FileDone:
    """One file of a batch job finished (or failed)."""

    index: int
    total: int
    path: str
    status: str  # "ok" | "failed" | "skipped"
    error: str = ""
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)


class Stopped(Exception):  # noqa: N818 - a signal, not an error
    """A core generator's ``stop`` event was set: it ends by raising this instead of returning a value.

    Raised by the inner steps (a plane, a tile loop); the function that owns a
    partial result (:func:`~napari_seglab.core.predict.iter_predict_image`,
    :func:`~napari_seglab.core.batch.iter_run_batch`) catches it and returns what
    is done, marked as stopped.
    """


def check_stop(stop: threading.Event | None) -> None:
    """Raise :class:`Stopped` when ``stop`` is set."""
    if stop is not None and stop.is_set():
        raise Stopped


def drive(gen: Generator[Any, Any, T], on_event: Callable[[Any], object] | None = None) -> T:
    """Run a core generator to its end, handing each event to ``on_event`` (or dropping it); returns its result.

    The one driver of the core's generators: the blocking twins, the batch
    workers and the CLI run through it. The generator is closed on the way
    out (an exception in ``on_event``, Ctrl-C), so its clean-up runs.
    """
    relayed = relay(gen, on_event if on_event is not None else _drop)
    try:
        while True:
            next(relayed)
    except StopIteration as fin:
        return fin.value
    finally:
        relayed.close()  # closes ``gen``


def _drop(event: Any) -> None:
    """The handler of events nobody asked for."""


def relay(gen: Generator[Any, Any, T], change: Callable[[Any], Any]) -> Generator[Any, Any, T]:
    """Re-yield ``gen``'s events passed through ``change``; return ``gen``'s value (use with ``yield from``).

    How an outer level puts its own context on an inner level's events (a
    plane's TileDone gets its plane index). Closing the relay closes ``gen``.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as fin:
                return fin.value
            yield change(event)
    finally:
        gen.close()


def collect(gen: Generator[Any, Any, T]) -> tuple[list, T]:
    """Drive a core generator to its end: (every event it yielded, its return value)."""
    events: list = []
    result = drive(gen, events.append)
    return events, result
