"""The running of a training job on real machines: time budget, CPU threads, bfloat16, Ctrl-C, cost.

Kept apart from :mod:`napari_seglab.core.train._train` (what is learnt) because none of it changes the
model: it decides how fast and how safely the steps run on this device.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import numpy as np
import torch

from ..device import cpu_bf16_supported
from ..models import ModelSpec


def cost_note(spec: ModelSpec, device: torch.device, time_limit: float | None,
              step_seconds: float | None = None) -> tuple[str, str]:
    """What the chosen model costs per step here and how long it needs to be useful: (text, level).

    ``step_seconds``: measured seconds per step (the first steps of a run);
    None uses the figure measured on a 2-core CPU (the family's preset, or
    ``FamilyCard.cpu_cost`` of the architecture). The steps a model needs to be
    useful are the architecture's (AP@0.5 above Otsu + watershed on the
    sample nuclei, benchmarks/quality_vs_time.py and benchmarks/families.py on
    2 CPU cores). The level is "warning" when the time budget is far too small
    for the model to become useful; the text then names a choice that is
    useful in that budget: the family's CPU architecture, or the U-Net's
    ``fast`` preset.
    """
    if device.type != "cpu" and step_seconds is None:
        return "", "info"
    family = spec.family_entry
    preset = _preset_of(spec)
    typical, steps = (preset.cpu_step_s, family.steps_to_useful) if preset else family.cpu_cost(spec.arch)
    typical = step_seconds or typical
    need = steps * typical
    where = "measured" if step_seconds else "typical on a 2-core CPU"
    text = f"{typical:.2f} s per step ({where}); useful after about {need:.0f} s"
    level = "info"
    if time_limit is not None and time_limit < 0.5 * need:
        level = "warning"
        text += f": a {time_limit:.0f} s budget is far too short{_better_choice(spec, time_limit, preset)}"
    return text, level


def _preset_of(spec: ModelSpec):
    family = spec.family_entry
    return next((p for p in family.presets.values() if spec.encoder == p.encoder
                 and spec.options.get("encoder_depth", 5) == p.encoder_depth), None)


def _better_choice(spec: ModelSpec, time_limit: float, preset) -> str:
    """What would be useful within ``time_limit`` on a CPU instead of ``spec``, as the end of a sentence."""
    family = spec.family_entry
    light = family.default_arch
    if light != spec.arch:
        step, steps = family.cpu_cost(light)
        if step * steps <= 2 * time_limit:
            return f" (the {light} architecture is useful after about {step * steps:.0f} s on a CPU)"
    if preset is not None and preset.name == "fast":
        return ""
    return " (the U-Net's 'fast' preset is useful within a minute)"


def bf16_helps(model: torch.nn.Module, x: torch.Tensor, mode: str, device: torch.device) -> tuple[bool, str]:
    """Decide bfloat16 autocast for CPU training (``mode`` "auto" | "on" | "off"): supported, faster than
    float32 and agreeing with it on the batch ``x``; returns (use it, why) for the log."""
    if device.type != "cpu" or mode == "off":
        return False, ""
    if mode == "auto" and not cpu_bf16_supported():
        return False, "float32 (this CPU has no native bfloat16)"
    times, outs = {}, {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for dtype in (torch.bfloat16, None, torch.bfloat16, None):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                    out = model(x).float()
                times[dtype] = time.perf_counter() - t0  # the second round counts: the first warms up
                outs[dtype] = out
    finally:
        model.train(was)
    err = float((outs[torch.bfloat16] - outs[None]).norm() / outs[None].norm().clamp(min=1e-6))
    faster = times[torch.bfloat16] < 0.9 * times[None]
    if mode == "on":
        return True, f"bfloat16 (asked for; {times[None] / times[torch.bfloat16]:.1f}x, deviation {err:.3f})"
    if err > 0.05:
        return False, f"float32 (bfloat16 deviates by {err:.2f} on this model)"
    if not faster:
        return False, "float32 (bfloat16 is not faster on this CPU)"
    return True, f"bfloat16 ({times[None] / times[torch.bfloat16]:.1f}x faster than float32, deviation {err:.3f})"


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C back while a checkpoint is written (main thread, POSIX); it arrives right after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class ThreadTuner:
    """Picks torch's CPU thread count by measuring steps, and measures again now and then.

    On an idle machine all cores win; when other programs share the cores
    (the usual laptop), fewer threads win by far, because a thread that loses
    its core makes the others wait at every barrier (2-core machine with
    another job running: 1 thread 0.15-0.30 s per step, 2 threads 0.65-0.79 s).
    Each candidate runs ``probe`` steps after a warm-up step; the fastest
    median wins until the next round, ``every`` steps later.
    """

    def __init__(self, most: int, fixed: int | None, probe: int = 3, every: int = 150):
        self.candidates = sorted({most, max(1, most // 2), 1}, reverse=True) if fixed is None else [fixed]
        self.probe, self.every = probe, every
        self.current = self.candidates[0]
        self.best = self.current
        self._plan: list[int] = []
        self._times: dict[int, list[float]] = {}
        self._next_round = 2  # after two warm-up steps
        self.best_s: float | None = None
        torch.set_num_threads(self.current)

    def before_step(self, step: int) -> None:
        if len(self.candidates) > 1 and step >= self._next_round and not self._plan:
            self._plan = [c for c in self.candidates for _ in range(self.probe + 1)]
            self._times = {c: [] for c in self.candidates}
        if self._plan:
            want = self._plan[0]
            if want != self.current:
                torch.set_num_threads(want)
                self.current = want

    def after_step(self, step: int, seconds: float) -> str | None:
        """Record a step; returns a note when a round of measurements chose a thread count."""
        if not self._plan:
            return None
        c = self._plan.pop(0)
        self._times[c].append(seconds)  # the first step of each candidate pays for the switch; not counted
        if self._plan:
            return None
        medians = {k: float(np.median(v[1:])) for k, v in self._times.items()}
        best = min(medians, key=medians.get)
        self.best_s = medians[best]
        changed = best != self.best
        self.best = best
        torch.set_num_threads(best)
        self.current = best
        self._next_round = step + self.every
        if not changed and step > self.every:
            return None
        parts = ", ".join(f"{k} thread{'s' if k > 1 else ''} {v:.2f} s" for k, v in sorted(medians.items()))
        return f"CPU threads: {best} ({parts} per step)"


class Budget:
    """Steps and time: when to stop so that a time limit holds, set-up and final save included.

    A step starts only when the time left covers one more step (its running
    mean) plus the work after the loop (the last validation and checkpoint
    writes, as measured). Time-limited epochs end after ``steps_per_epoch``
    steps or a twelfth of the budget, whichever comes first, so that a
    one-minute run draws a validation curve.
    """

    def __init__(self, time_limit: float | None, epochs: int | None, steps_per_epoch: int, clock, t_start: float):
        self.clock, self.t_start = clock, t_start
        self.limit = time_limit
        self.total_steps = epochs * steps_per_epoch if epochs else None
        self.steps_per_epoch = steps_per_epoch
        # a pure time budget validates by the clock, so a short run still draws a curve
        self.epoch_seconds = max(3.0, self.limit / 12) if self.limit and not epochs else None
        self.step_s: float | None = None
        self.final_s = 0.0  # validation + saves after the last step
        self.step = 0

    def elapsed(self) -> float:
        return self.clock() - self.t_start

    def progress(self) -> float:
        parts = [self.step / self.total_steps] if self.total_steps else []
        if self.limit:
            parts.append(self.elapsed() / self.limit)
        return max(parts) if parts else 0.0

    def exhausted(self) -> bool:
        if self.total_steps is not None and self.step >= self.total_steps:
            return True
        if self.limit is None:
            return False
        return self.elapsed() + (self.step_s or 0.0) + self.final_s >= self.limit

    def record_interval(self, seconds: float) -> None:
        """Wall time from one step's start to the next (its consumer's work included)."""
        self.step_s = seconds if self.step_s is None else 0.7 * self.step_s + 0.3 * seconds

    def epoch_over(self, steps: int, epoch_start: float) -> bool:
        if steps >= self.steps_per_epoch:
            return True
        return self.epoch_seconds is not None and self.clock() - epoch_start >= self.epoch_seconds
