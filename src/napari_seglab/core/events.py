"""Progress events yielded by the long-running core generators.

A core function that runs long (training, tiled prediction, batch jobs) is a
generator: it yields these small frozen dataclasses and returns its result.
The same generator drives a napari thread worker, the CLI progress display and
the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
class FileDone:
    """One file of a batch job finished (or failed)."""

    index: int
    total: int
    path: str
    status: str  # "ok" | "failed" | "skipped"
    error: str = ""
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)


def run_to_completion(gen, on_event=None) -> Any:
    """Drive a core generator to its end, handing each event to ``on_event`` (or dropping it); returns its result."""
    try:
        while True:
            event = next(gen)
            if on_event is not None:
                on_event(event)
    except StopIteration as fin:
        return fin.value


def collect(gen) -> tuple[list, Any]:
    """Drive a core generator to its end: (every event it yielded, its return value)."""
    events: list = []
    result = run_to_completion(gen, events.append)
    return events, result
