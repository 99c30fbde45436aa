"""The training loop: epochs of optimiser steps, then an evaluation that keeps the best model.

:func:`run_loop` drives a :class:`~napari_seglab.core.train._setup.TrainRun` until its budget
(steps or time) is spent or ``stop`` is set; it yields TrainStep, EpochEnd,
CheckpointSaved, Preview and Message events and returns the history. The best
model so far is always on disk after the first step (see
:class:`~napari_seglab.core.train._state.RunState`), whatever ends the loop.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator

import numpy as np
import torch

from ..data import PatchSampler
from ..errors import InputError
from ..events import CheckpointSaved, Message, Preview, TrainStep, drive
from ..models import CheckpointMeta, LossInputs, save_checkpoint
from ..predict import iter_predict_image, wrap_model
from ._runtime import cost_note, sigint_deferred
from ._selftrain import self_training_round
from ._setup import TrainRun


def run_loop(run: TrainRun, *, stop: threading.Event | None = None, preview_plane: np.ndarray | None = None
             ) -> Generator[object, None, tuple[list[dict], bool]]:
    """Train until the budget is spent or ``stop`` is set; returns (history of epochs, stopped?)."""
    history: list[dict] = []
    stopped = False
    epoch = 0
    try:
        finished = False
        while not finished:
            epoch += 1
            losses, stopped = yield from _epoch(run, epoch, stop, preview_plane)
            epochs = run.config.epochs
            finished = stopped or run.budget.exhausted() or (epochs is not None and epoch >= epochs)
            if not losses:
                break
            yield from _evaluate(run, epoch, losses, history, finished)
        run.state.completed = True
    finally:
        run.state.rescue(history, run.optimizer)
    if run.state.best_state is None:
        raise InputError("training was stopped before the first step; nothing to save")
    return history, stopped


def _epoch(run: TrainRun, epoch: int, stop: threading.Event | None, preview_plane: np.ndarray | None
           ) -> Generator[object, None, tuple[list[float], bool]]:
    """The steps of one epoch; returns (their losses, stopped?)."""
    config, budget, clock, state = run.config, run.budget, run.clock, run.state
    losses: list[float] = []
    epoch_start = clock()
    last_start = None
    while not budget.epoch_over(len(losses), epoch_start):
        if stop is not None and stop.is_set():
            return losses, True
        if budget.exhausted():
            break
        if run.pending_rounds and budget.progress() >= run.pending_rounds[0]:
            yield from _self_training(run, run.pending_rounds.pop(0), stop)
            if budget.exhausted():
                break
        if run.tuner is not None:
            run.tuner.before_step(budget.step)
        t_step = clock()
        if last_start is not None:  # wall time per step, whatever the consumer did in between
            budget.record_interval(t_step - last_start)
        last_start = t_step
        for group in run.optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(budget.progress())
        value = _step(run)
        budget.step += 1
        note = run.tuner.after_step(budget.step, clock() - t_step) if run.tuner is not None else None
        losses.append(value)
        state.ema = value if state.ema is None else _smooth(state.ema, value, budget.step)
        yield TrainStep(step=budget.step, total_steps=budget.total_steps, epoch=epoch, loss=value,
                        lr=run.optimizer.param_groups[0]["lr"], elapsed=budget.elapsed(),
                        time_limit=config.time_limit)
        if note:
            yield Message(note)
            if budget.step < 20:
                cost, level = cost_note(run.spec, run.device, config.time_limit, run.tuner.best_s)
                yield Message(cost, level)
        if config.preview_every and preview_plane is not None and budget.step % config.preview_every == 0:
            yield _preview(run.model, state.meta, run.device, preview_plane, budget.step)
    return losses, False


#: with a time budget, a self-training round is skipped when, at the pace of the last one, it would end past
#: this share of the budget (its samples would leave too few steps to learn from them); a round that reaches
#: the end of the budget is cut short and adds nothing. A synthetic 24x128x128 stack on a loaded 2-core
#: machine: each 3D round took about a third of a 600 s budget, and the run overran it by 211 s
ROUND_FIT = 0.85


class _RoundStop:
    """A self-training round's stop: the user's, or the end of the time budget."""

    def __init__(self, stop: threading.Event | None, budget):
        self.stop, self.budget = stop, budget
        self.timed_out = False

    def is_set(self) -> bool:
        if self.stop is not None and self.stop.is_set():
            return True
        b = self.budget
        self.timed_out = b.limit is not None and b.elapsed() + b.final_s >= b.limit
        return self.timed_out


def _self_training(run: TrainRun, at: float, stop: threading.Event | None) -> Generator[Message, None, None]:
    """One self-training round at ``at`` of the budget (skipped when it would not fit the time left)."""
    config, budget, state = run.config, run.budget, run.state
    if budget.limit and run.round_seconds is not None and \
            budget.elapsed() + run.round_seconds > ROUND_FIT * budget.limit:
        yield Message(f"self-training ({at:.0%} of the budget): skipped; the last round took "
                      f"{run.round_seconds:.0f} s and {max(budget.limit - budget.elapsed(), 0):.0f} s are left, "
                      "better spent training on what it added")
        return
    # a round can take a while (a stack's 3D prediction: minutes on a large one); say so first
    what = f"{len(run.volumes)} stack(s) in 3D" if run.volumes else f"its {len(run.samples)} training plane(s)"
    yield Message(f"self-training ({at:.0%} of the budget): the model predicts {what}...")
    t0 = run.clock()
    round_stop = _RoundStop(stop, budget)
    samples, note, favour = self_training_round(run.model, state.meta, run.device, run.samples, run.held,
                                                config, run.volumes, round_stop)
    run.round_seconds = run.clock() - t0
    if round_stop.timed_out or (stop is not None and stop.is_set()):  # the run ends: nothing is added
        yield Message("self-training: " + ("the time limit came during the round: nothing added"
                                           if round_stop.timed_out else "stopped during the round: nothing added"))
        return
    run.sampler = PatchSampler(samples, config.patch, run.rng, favour=favour, scale_jitter=config.scale_jitter or 1.0)
    state.new_training_data(bool(run.validator))
    yield Message(f"self-training: {note}")


def _evaluate(run: TrainRun, epoch: int, losses: list[float], history: list[dict], finished: bool
              ) -> Generator[object, None, None]:
    """End of an epoch: validate, keep the best model (written unless the run is finishing), plan the end."""
    state, clock = run.state, run.clock
    t_end = clock()
    record, event = state.end_epoch(epoch, losses, run.validator, run.device, run.config.epochs)
    history.append(record)
    yield event
    val_s = clock() - t_end
    if event.is_best and state.path and not finished:  # the final write saves the last best
        t_save = clock()
        with sigint_deferred():
            save_checkpoint(state.path, run.model, state.best.info)
        state.written = True
        state.save_s = clock() - t_save
        yield CheckpointSaved(path=state.path, epoch=epoch, metric=event.val_dice)
    # after the last step come one validation, the best model's write and the optimiser's
    # (about 3x the weights): the budget keeps that much time in hand
    run.budget.final_s = 1.2 * (val_s + state.save_s * (4.0 if state.last_path else 1.0))


def _lr_factor(progress: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = (progress - warmup) / max(1e-6, 1 - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def _smooth(ema: float, value: float, step: int) -> float:
    """Running mean whose memory grows with the run (1/step at first, 0.1 later): no lag in short runs."""
    a = max(0.1, 1.0 / step)
    return (1 - a) * ema + a * value


def _step(run: TrainRun) -> float:
    """One optimiser step on a fresh batch; returns the loss."""
    config, spec, device = run.config, run.spec, run.device
    reg, inst, boxes = None, None, None
    if spec.family_entry.kind.boxes:  # a box detector learns the patches' boxes (LossInputs.boxes)
        x, y, boxes = run.sampler.box_batch(config.batch_size)
    elif spec.has_regression_head:
        x, y, reg = run.sampler.head_batch(config.batch_size)
    else:
        x, y, inst = run.sampler.batch(config.batch_size)
    xt = torch.from_numpy(x).to(device)
    if run.channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.float16)
    else:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.use_bf16)
    batch = LossInputs(images=xt, targets=y, instances=inst, regression=reg, head=spec.head,
                       class_weights=run.class_weights, focal_gamma=config.focal_gamma, boxes=boxes)
    with autocast:
        loss = spec.family_entry.loss(run.model, batch)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise InputError("training diverged (loss is NaN or Inf); lower the learning rate")
    return value


def _preview(model, meta: CheckpointMeta, device, plane: np.ndarray, step: int) -> Preview:
    lm = wrap_model(model, meta, device)
    was_training = model.training
    model.eval()
    try:
        pred = drive(iter_predict_image(lm, plane, probabilities=True, tile=512))
    finally:
        model.train(was_training)
    return Preview(step=step, labels=pred.labels, probabilities=pred.probabilities)
