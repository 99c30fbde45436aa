"""Where the Train dock keeps models, what they cost on disk, and which model a continued run keeps.

Each run writes its best model ``M.pt`` (a resnet34 U-Net: about 100 MB)
and, for Continue, ``M.last.pt``: the last step's weights with the optimizer
state (about three times the model). Continue follows the latest run only,
so the dock deletes a ``.last.pt`` as soon as Continue can no longer use it:
when the next run has finished, and when the dock closes.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.models import CheckpointMeta

#: the default folder of models trained in the Train dock
MODELS_DIR = Path.home() / "seglab_models"
#: a continued run whose validation Dice is lower by more than this ended worse than its start
WORSE_BY = 0.005


def default_model_path(folder: Path | None = None) -> Path:
    """``<folder>/model_<YYYYmmdd-HHMMSS>.pt`` (default folder :data:`MODELS_DIR`)."""
    return (folder or MODELS_DIR) / f"model_{time.strftime('%Y%m%d-%H%M%S')}.pt"


def unused_path(path: Path, taken: set[Path]) -> Path:
    """``path``, or ``<stem>_2.pt``, ``_3`` ... when it is one of ``taken`` or exists."""
    candidate, n = path, 2
    while candidate in taken or candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


def state_path(model: str | Path) -> Path:
    """The ``.last.pt`` (weights and optimizer state for Continue) written beside ``model``."""
    return Path(model).with_suffix(".last.pt")


def drop_state(path: Path | None) -> bool:
    """Delete a ``.last.pt`` file; True if one was deleted (a file already gone is fine)."""
    if path is None or not str(path).endswith(".last.pt"):
        return False
    with contextlib.suppress(OSError):
        path.unlink()
        return True
    return False


def _size(num_bytes: float) -> str:
    if num_bytes >= 1e9:
        return f"{num_bytes / 1e9:.1f} GB"
    return f"{num_bytes / 1e6:.0f} MB"


def _shorter(folder: Path) -> str:
    with contextlib.suppress(ValueError):
        return "~/" + str(folder.relative_to(Path.home()))
    return str(folder)


def folder_note(folder: Path) -> str:
    """One line about a models folder: where it is, how many models, how much space they take."""
    models = states = 0
    used = 0
    with contextlib.suppress(OSError):
        for path in folder.glob("*.pt"):
            with contextlib.suppress(OSError):
                used += path.stat().st_size
                if path.name.endswith(".last.pt"):
                    states += 1
                else:
                    models += 1
    what = f"{models} model{'' if models == 1 else 's'}"
    if states:
        what += f" + {states} Continue state{'' if states == 1 else 's'}"
    return f"models folder: {_shorter(folder)} ({what}, {_size(used)})" if models or states else \
        f"models folder: {_shorter(folder)} (empty)"


def _dice(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_dice(meta: CheckpointMeta | dict) -> float | None:
    """The validation Dice a checkpoint's metadata (typed, or its dict form) records (None without a hold-out).

    A box detector's validation score is its box AP@0.5 ("val_ap50"), used in the same places.
    """
    metrics = (meta.get("metrics") if isinstance(meta, dict) else meta.metrics) or {}
    return _dice(metrics.get("val_dice") if metrics.get("val_dice") is not None else metrics.get("val_ap50"))


def score_name(meta: CheckpointMeta | dict) -> str:
    """What :func:`best_dice` measured: "val Dice", or "val box AP@0.5" for a box detector."""
    metrics = (meta.get("metrics") if isinstance(meta, dict) else meta.metrics) or {}
    return "val box AP@0.5" if metrics.get("val_ap50") is not None else "val Dice"


def start_dice(history: list[dict]) -> float | None:
    """The start model's Dice on this run's own hold-out, when the run measured it (epoch 0)."""
    for record in history or ():
        if record.get("epoch") == 0:
            return _dice(record.get("val_dice") if record.get("val_dice") is not None else record.get("val_ap50"))
    return None


@dataclass(frozen=True)
class Verdict:
    """How a continued run compares with the model it started from."""

    keep_new: bool
    before: float | None = None
    after: float | None = None
    same_holdout: bool = False

    def text(self) -> str:
        """A sentence for the status line ("" when there is nothing to say)."""
        if self.keep_new or self.before is None or self.after is None:
            return ""
        where = "on the same held-out pixels" if self.same_holdout else \
            "each on its own run's held-out pixels"
        return (f"this run ended worse than the model it started from (val Dice {self.after:.3f} vs "
                f"{self.before:.3f}, {where}): the earlier model is kept for predicting")


def judge(meta: CheckpointMeta | dict, history: list[dict], previous_dice: float | None) -> Verdict:
    """Keep a continued run's best model (``meta``, ``history``) or the model it started from?

    The start model's score on this run's hold-out (``history``'s epoch 0)
    is the fair comparison; without it, the Dice the start model reached in
    its own run (``previous_dice``). Without a Dice on both sides the new
    model is kept.
    """
    after = best_dice(meta)
    same = start_dice(history)
    before = same if same is not None else previous_dice
    if after is None or before is None:
        return Verdict(keep_new=True, before=before, after=after)
    return Verdict(keep_new=after >= before - WORSE_BY, before=before, after=after, same_holdout=same is not None)
