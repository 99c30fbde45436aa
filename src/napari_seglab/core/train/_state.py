"""The state of one training run: validation on held-out pixels, the best model so far, checkpoints.

:class:`RunState` keeps the best weights and writes them so that a loadable
checkpoint exists at every moment after the first step, whatever ends the run.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data import Normalization, Sample
from ..evaluate import mean_dice, per_class_dice
from ..events import EpochEnd, drive
from ..labels import IGNORE, get_mode, is_instance_mode
from ..models import Checkpoint, CheckpointMeta, ModelSpec, save_checkpoint
from ..predict import forward_probabilities, forward_raw, wrap_model
from ._runtime import Budget, sigint_deferred


class Validator:
    """Held-out crops and their targets; scores a model on them."""

    def __init__(self, samples: list[Sample], held: list[np.ndarray], margin: int = 16):
        self.crops = []
        for s, h in zip(samples, held, strict=True):
            if not h.any():
                continue
            ys, xs = np.nonzero(h)
            y0, y1 = max(0, ys.min() - margin), min(h.shape[0], ys.max() + 1 + margin)
            x0, x1 = max(0, xs.min() - margin), min(h.shape[1], xs.max() + 1 + margin)
            tgt = np.where(h, s.target, IGNORE)[y0:y1, x0:x1]
            self.crops.append((s.image[:, y0:y1, x0:x1], tgt))

    def __bool__(self) -> bool:
        return bool(self.crops)

    def score(self, model: torch.nn.Module, meta: CheckpointMeta, device: torch.device, mode: str
              ) -> tuple[float, list[float]]:
        """(mean Dice, per-class Dice) of ``model`` on the held-out pixels; object families score foreground.

        Dice follows the evaluation's one policy (:func:`~napari_seglab.core.evaluate.class_dice`):
        a class absent from both the prediction and the held-out pixels is NaN, left out of the mean.
        """
        lm = wrap_model(model, meta, device)
        spec = meta.model
        preds, tgts = [], []
        was_training = model.training
        model.eval()
        try:
            for img, tgt in self.crops:
                if not spec.semantic:
                    detect = spec.family_entry.predict_objects
                    inst, _ = drive(detect(lm, img, tile=max(img.shape[-2:]), overlap=0.0,
                                           score_threshold=0.5))
                    pred = (inst > 0).astype(np.int64)
                    tgt = np.where(tgt == IGNORE, IGNORE, (tgt > 0).astype(np.int64))
                elif spec.has_regression_head:  # foreground: sigmoid(logit) > 0.5
                    pred = (forward_raw(lm, img)[0] > 0).astype(np.int64)
                else:
                    pred = np.argmax(forward_probabilities(lm, img), 0)
                preds.append(pred.reshape(-1))
                tgts.append(tgt.reshape(-1))
        finally:
            model.train(was_training)
        n = max(2, spec.n_classes) if spec.semantic else 2
        # background counts as a class: a foreground-only Dice would reward a model that paints
        # everything as foreground when the held-out strokes are mostly objects
        per = per_class_dice(np.concatenate(preds), np.concatenate(tgts), n, ignore=IGNORE)
        return mean_dice(per), per


def run_meta(config, spec: ModelSpec, norm: Normalization, scale: float, samples: list[Sample],
             counts: np.ndarray, note: str, use_bf16: bool, object_area: float | None = None) -> CheckpointMeta:
    """The metadata of a run's checkpoints (``config``: the resolved TrainConfig), before any metric."""
    if spec.family_entry.kind.boxes:
        names = list(get_mode("boxes").class_names(spec.n_classes))
    elif not spec.semantic or spec.has_regression_head:
        names = ["background", "object"]
    elif is_instance_mode(config.label_mode):
        names = ["background", "interior", "boundary"]
    else:
        names = ["background"] + [f"class {i}" for i in range(1, spec.n_classes)]
    training = {
        "config": dict(asdict(config).items()),
        "data": [{"shape": list(s.target.shape), "annotated_pixels": s.annotated} for s in samples],
        "class_pixels": counts.tolist(),
        "weights": note,
        "bf16": use_bf16,
    }
    return CheckpointMeta(model=spec, label_mode=config.label_mode, class_names=tuple(names),
                          normalization=norm, patch=config.patch, scale=scale, object_area=object_area,
                          training=training)


class RunState:
    """The best model so far and the checkpoints of one run (kept loadable at every moment)."""

    def __init__(self, model, meta: CheckpointMeta, config, budget: Budget):
        self.model, self.meta, self.budget = model, meta, budget
        self.path = config.model_out
        self.last_path = str(Path(self.path).with_suffix(".last.pt")) if self.path and config.save_last else None
        self.best_score, self.best_state, self.best_epoch = (-math.inf, -math.inf), None, 0
        self.best: Checkpoint | None = None
        self.ema: float | None = None
        self.written = False  # is the current best on disk?
        self.completed = False  # did the loop end normally (final() then writes the best)?
        self.save_s = 0.0  # seconds one checkpoint write took

    def checkpoint(self, state: dict, metrics: dict, epoch: int) -> Checkpoint:
        training = {**self.meta.training, "steps": self.budget.step, "epochs": epoch,
                    "seconds": round(self.budget.elapsed(), 2)}
        return Checkpoint(meta=self.meta.replace(metrics=metrics, training=training), state_dict=state, path=self.path)

    def end_epoch(self, epoch: int, losses: list[float], validator, device, epochs: int | None
                  ) -> tuple[dict, EpochEnd]:
        """Validate after an epoch and keep the model when it is the best so far; returns (record, event).

        The validation score is the validator's ``metric``: "val_dice" (the
        default) or a box detector's "val_ap50" (box AP@0.5). The record and
        the metrics hold it under that key (the other one is None); the
        event's ``val_dice`` carries it either way, for the loss plot.
        """
        key = getattr(validator, "metric", "val_dice")
        train_loss = float(np.mean(losses))
        val_dice, per_class = None, ()
        if validator:
            val_dice, per = validator.score(self.model, self.meta, device, self.meta.label_mode)
            per_class = tuple(per)
            # validation Dice saturates on small annotations: ties go to the lower training loss
            score = (round(val_dice, 3), -self.ema)
        else:
            score = (0.0, -self.ema)
        is_best = score > self.best_score
        record = {"epoch": epoch, "step": self.budget.step, "train_loss": train_loss, "val_dice": val_dice,
                  "per_class_dice": list(per_class), "seconds": round(self.budget.elapsed(), 2)}
        if key != "val_dice":
            record.update({"val_dice": None, key: val_dice})
        if is_best:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}
            metrics = {"val_dice": record["val_dice"], "train_loss": train_loss, "epoch": epoch,
                       "per_class_dice": [None if math.isnan(d) else d for d in per_class]}
            if key != "val_dice":
                metrics[key] = val_dice
            self.best = self.checkpoint(self.best_state, metrics, epoch)
            self.written = False
        event = EpochEnd(epoch=epoch, epochs=epochs, train_loss=train_loss, val_dice=val_dice,
                         per_class_dice=per_class, elapsed=self.budget.elapsed(), is_best=is_best)
        return record, event

    def new_training_data(self, validated: bool) -> None:
        """The training samples changed (a self-training round). Without validation the best model is the one of
        the lowest training loss, which the new samples' losses cannot be compared with: the choice starts
        again (the best weights so far stay, for a run stopped before the next epoch ends)."""
        self.ema = None
        if not validated:
            self.best_score = (-math.inf, -math.inf)

    def rescue(self, history: list[dict], optimizer) -> None:
        """On any exit: the best model (or, before the first epoch end, the current one) and the optimiser."""
        if self.budget.step == 0:
            return
        with contextlib.suppress(Exception):  # never mask the original error while cleaning up
            if self.best_state is None:
                self.best_state = {k: v.detach().to("cpu").contiguous().clone()
                                   for k, v in self.model.state_dict().items()}
                self.best_epoch = 0
                self.best = self.checkpoint(self.best_state, {"note": "stopped before the first validation"}, 0)
            if self.path and not self.written and not self.completed:
                with sigint_deferred():
                    save_checkpoint(self.path, StateOnly(self.best_state), self.best.info)
                self.written = True
        if self.last_path:
            with contextlib.suppress(Exception), sigint_deferred():
                save_checkpoint(self.last_path, self.model,
                                self.checkpoint({}, {"history": history}, len(history)).info, optimizer)

    def final(self, history: list[dict]) -> Checkpoint:
        """The returned checkpoint: the best weights with the whole history (already on disk)."""
        rec = history[self.best_epoch - 1] if self.best_epoch else {}
        metrics = {"val_dice": rec.get("val_dice"), "train_loss": rec.get("train_loss"), "epoch": self.best_epoch,
                   "history": history}
        if "val_ap50" in rec:
            metrics["val_ap50"] = rec["val_ap50"]
        best = self.checkpoint(self.best_state, metrics, len(history))
        if self.path:
            with sigint_deferred():
                save_checkpoint(self.path, StateOnly(self.best_state), best.info)
        return best


class StateOnly:
    """Adapter so save_checkpoint can write a plain state dict."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state
