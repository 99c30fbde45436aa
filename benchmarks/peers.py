"""SegLab against Cellpose 3 and StarDist trained from scratch: same images, labels and wall-clock budget.

For each image pair (``sample``: train ``nuclei_train.tif``, predict
``nuclei_test.tif``; ``real``: the DSB2018 nuclei image in the StarDist wheel,
train the left half, predict the right half), budget and seed, trains

- Cellpose 3.1 (its CPnet, flows + cell probability; ``train.train_seg`` with
  SGD lr 0.2, batch 8, 128 px crops, no pretrained weights), stopped when the
  budget (set-up included) runs out, then ``CellposeModel.eval`` at the
  diameter it learned;
- StarDist 0.9 (its U-Net, 32 base filters, 32 rays, grid 2, 256 px patches,
  batch 4, flips and turns), stopped by a Keras callback when the budget runs
  out, then ``predict_instances`` with its default thresholds;
- SegLab through its Python API (``core.train.iter_train`` with
  ``TrainConfig(label_mode="instances", time_limit=budget)``, then
  ``core.predict.iter_predict_image``),

one after the other, and scores all with ``core.metrics.match_instances``.

Cellpose 3.1.1.3 pins numpy < 2.1 and StarDist needs TensorFlow, so each
usually lives in its own environment: ``--cellpose-python`` and
``--stardist-python`` name those interpreters (this file runs there in worker
mode, importing only numpy and the peer). A peer that is not importable is
skipped, and the script says so.

Run on a quiet machine (the budget is wall-clock time):

    python benchmarks/peers.py --budget 120 600 --seeds 0 1 2 --images sample real \\
        --cellpose-python /path/to/cellpose-venv/bin/python --stardist-python /path/to/stardist-venv/bin/python

Prints a row per run, the mean and spread per tool, and last the ratios
seglab / peer of AP@0.5, AP@0.75, Dice and steps per second.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class _OutOfTime(Exception):
    pass


def cellpose_worker(job: str, out: str) -> None:
    """Train Cellpose from scratch within the budget and predict; runs in the Cellpose interpreter."""
    import torch
    from cellpose import models, train

    d = np.load(job)
    budget, seed = float(d["budget"]), int(d["seed"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.monotonic()
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2)
    steps = 0
    loss_fn = train._loss_fn_seg

    def budgeted_loss(lbl, y, device):  # train_seg has no time limit: stop it from its loss
        nonlocal steps
        if time.monotonic() - t0 > budget:
            raise _OutOfTime
        steps += 1
        return loss_fn(lbl, y, device)

    train._loss_fn_seg = budgeted_loss
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(_OutOfTime):
        # one "epoch" = one batch of 8 random crops of the training image
        train.train_seg(model.net, train_data=[d["train_image"]], train_labels=[d["train_labels"]],
                        channels=[0, 0], batch_size=8, learning_rate=0.2, SGD=True, weight_decay=1e-5,
                        n_epochs=1_000_000, nimg_per_epoch=8, bsize=128, min_train_masks=1,
                        save_path=tmp, save_every=10**9, model_name="peer")
    seconds = time.monotonic() - t0
    diameter = float(model.net.diam_labels.item())
    t1 = time.monotonic()
    masks = model.eval(d["test_image"], channels=[0, 0], diameter=diameter)[0] if steps else \
        np.zeros(d["test_image"].shape, np.int32)
    np.savez(out, labels=np.asarray(masks, np.int32), steps=steps, seconds=seconds,
             predict_seconds=time.monotonic() - t1)


def stardist_worker(job: str, out: str) -> None:
    """Train StarDist 2D from scratch within the budget and predict; runs in the StarDist interpreter.

    Its U-Net with 32 base filters, 32 rays, grid 2, 256 px patches (the image's size where smaller), batch 4,
    flips and 90-degree turns; the training image doubles as validation data (a user with one painted image
    has no other). Default thresholds (optimising them would spend the budget).
    """
    from stardist.models import Config2D, StarDist2D

    d, x, y, t0 = stardist_setup(job)
    patch = tuple(min(256, s // 16 * 16) for s in x.shape)
    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=patch, train_batch_size=4,
                    unet_n_filter_base=32, train_tensorboard=False)

    def augment(img, lbl):
        k = np.random.randint(4)
        img, lbl = np.rot90(img, k), np.rot90(lbl, k)
        if np.random.rand() < 0.5:
            img, lbl = img[:, ::-1], lbl[:, ::-1]
        return np.ascontiguousarray(img), np.ascontiguousarray(lbl)

    stardist_train_and_predict(StarDist2D, conf, d, x, y, augment, t0, out)


def stardist_setup(job: str):
    """A StarDist worker's start (2D and 3D; in the StarDist interpreter): the job, TensorFlow's threads
    (``OMP_NUM_THREADS``) and seeds, and the normalised training image and hole-filled labels.
    Returns ``(job arrays, x, y, start time)``; the budget counts from that time, set-up included."""
    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist import fill_label_holes

    d = np.load(job)
    seed = int(d["seed"])
    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(seed)
    np.random.seed(seed)
    t0 = time.monotonic()
    x = normalize(d["train_image"].astype(np.float32), 1, 99.8)
    y = fill_label_holes(d["train_labels"].astype(np.int32))
    return d, x, y, t0


def stardist_train_and_predict(model_class, conf, d, x, y, augment, t0: float, out: str) -> None:
    """Train a StarDist model (2D or 3D) from scratch until the job's budget (counted from ``t0``) is spent,
    the training data doubling as validation data, then predict the test image and write ``out``:
    ``labels``, ``steps``, ``seconds`` (training) and ``predict_seconds``."""
    import tensorflow as tf
    from csbdeep.utils import normalize

    budget = float(d["budget"])
    steps = 0

    class Budget(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            nonlocal steps
            steps += 1
            if time.monotonic() - t0 > budget:
                self.model.stop_training = True

    with tempfile.TemporaryDirectory() as tmp:
        model = model_class(conf, name="peer", basedir=tmp)
        model.prepare_for_training()
        model.callbacks.append(Budget())
        model.train([x], [y], validation_data=([x], [y]), augmenter=augment, epochs=10**6, steps_per_epoch=20)
        seconds = time.monotonic() - t0
        t1 = time.monotonic()
        labels, _ = model.predict_instances(normalize(d["test_image"].astype(np.float32), 1, 99.8))
    np.savez(out, labels=np.asarray(labels, np.int32), steps=steps, seconds=seconds,
             predict_seconds=time.monotonic() - t1)


def run_peer(tool: str, python: str, data, budget: float, seed: int) -> dict:
    """Train and predict with a peer (``cellpose`` or ``stardist``) in its own interpreter."""
    tr_img, tr_lab, te_img, _ = data
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "job.npz", Path(tmp) / "out.npz"
        np.savez(job, train_image=tr_img, train_labels=tr_lab, test_image=te_img, budget=budget, seed=seed)
        proc = subprocess.run([python, __file__, "--worker", tool, str(job), str(out)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{tool} worker failed:\n{proc.stderr[-3000:]}")
        r = np.load(out)
        return {"labels": r["labels"], "steps": int(r["steps"]), "seconds": float(r["seconds"]),
                "predict_seconds": float(r["predict_seconds"])}


def run_seglab(data, budget: float, seed: int, overrides: dict) -> dict:
    import torch

    from napari_seglab.core.events import drive
    from napari_seglab.core.predict import iter_predict_image, load_model
    from napari_seglab.core.train import TrainConfig, iter_train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    tr_img, tr_lab, te_img, _ = data
    config = TrainConfig(label_mode="instances", epochs=None, time_limit=budget, seed=seed, device="cpu",
                         save_last=False, **overrides)
    t0 = time.monotonic()
    result = drive(iter_train([tr_img], [tr_lab.astype(np.int32)], config))
    seconds = time.monotonic() - t0
    t1 = time.monotonic()
    pred = drive(iter_predict_image(load_model(result.checkpoint, "cpu"), te_img))
    return {"labels": np.asarray(pred.labels, np.int32), "steps": int(result.steps), "seconds": seconds,
            "predict_seconds": time.monotonic() - t1}


def _overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings -> TrainConfig overrides (VALUE parsed as int, float, or kept as text)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def _peer_python(arg: str | None, module: str) -> str | None:
    """The interpreter that runs a peer: the one given, else this one when it can import ``module``."""
    if arg:
        return arg
    ok = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0
    return sys.executable if ok else None


def _cellpose_python(arg: str | None) -> str | None:
    return _peer_python(arg, "cellpose")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, nargs="+", default=[120, 600], help="seconds of wall time per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", nargs="+", default=["sample", "real"], choices=["sample", "real"])
    ap.add_argument("--cellpose-python", default=None, help="interpreter with cellpose 3.1 (default: this one)")
    ap.add_argument("--stardist-wheel", default=None, help="stardist wheel holding the real image")
    ap.add_argument("--seglab", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides")
    ap.add_argument("--stardist-python", default=None,
                    help="interpreter with stardist 0.9 and TensorFlow (default: this one, when it has them)")
    ap.add_argument("--tools", nargs="+", default=["cellpose", "stardist", "seglab"],
                    choices=["cellpose", "stardist", "seglab"], help="which tools to run (a ratio needs its peer)")
    args = ap.parse_args(argv)

    from instance_heads import real_data, sample_data, stardist_wheel

    from napari_seglab.core.evaluate import match_instances

    python = _cellpose_python(args.cellpose_python) if "cellpose" in args.tools else None
    if python is None and "cellpose" in args.tools:
        print("cellpose is not importable here; pass --cellpose-python (pip install cellpose==3.1.1.3 "
              "needs numpy<2.1, so give it its own environment). Cellpose skipped.")
    sd_python = _peer_python(args.stardist_python, "stardist.models") if "stardist" in args.tools else None
    if sd_python is None and "stardist" in args.tools:
        print("stardist (with TensorFlow) is not importable here; pass --stardist-python (a venv with "
              "stardist==0.9.2 and tensorflow-cpu). StarDist skipped.")
    interpreters = {"cellpose": python, "stardist": sd_python}
    loaders = {"sample": sample_data, "real": lambda: real_data(stardist_wheel(args.stardist_wheel))}
    tools = [t for t in ("cellpose", "stardist") if interpreters[t]] + (["seglab"] if "seglab" in args.tools else [])
    rows = []
    print(f"{'image':7} {'budget':>6} {'seed':>4} {'tool':9} {'AP50':>6} {'AP75':>6} {'Dice':>6} {'n/true':>8} "
          f"{'steps':>5} {'steps/s':>7} {'train s':>7} {'pred s':>6}", flush=True)
    for name in args.images:
        data = loaders[name]()
        for budget in args.budget:
            for seed in args.seeds:
                for tool in tools:
                    r = run_seglab(data, budget, seed, _overrides(args.seglab)) if tool == "seglab" else \
                        run_peer(tool, interpreters[tool], data, budget, seed)
                    m = match_instances(r["labels"], data[3], (0.5, 0.75))
                    rate = r["steps"] / max(r["seconds"], 1e-9)
                    rows.append((name, budget, tool, m["ap50"], m["ap75"], m["dice"], rate))
                    print(f"{name:7} {budget:6g} {seed:4d} {tool:9} {m['ap50']:6.3f} {m['ap75']:6.3f} "
                          f"{m['dice']:6.3f} {m['n_pred']:>3}/{m['n_true']:<4} {r['steps']:5d} {rate:7.3f} "
                          f"{r['seconds']:7.1f} {r['predict_seconds']:6.1f}", flush=True)
    print("\nmean (spread = max - min over seeds)")
    means = {}
    for name in args.images:
        for budget in args.budget:
            for tool in tools:
                v = np.array([r[3:] for r in rows if r[:3] == (name, budget, tool)])
                means[name, budget, tool] = v.mean(0)
                print(f"{name:7} {budget:6g} {tool:9} AP50 {v[:, 0].mean():.3f} ({np.ptp(v[:, 0]):.3f}) "
                      f"AP75 {v[:, 1].mean():.3f} ({np.ptp(v[:, 1]):.3f}) Dice {v[:, 2].mean():.3f} "
                      f"({np.ptp(v[:, 2]):.3f}) steps/s {v[:, 3].mean():.3f}")
    for peer in (t for t in tools if t != "seglab" and "seglab" in tools):
        print(f"\nratios seglab / {peer} (AP50, AP75, Dice, steps/s)")
        for name in args.images:
            for budget in args.budget:
                s, c = means[name, budget, "seglab"], means[name, budget, peer]
                print(f"{name:7} {budget:6g} " + "  ".join(f"{a / b:.2f}" if b > 0 else "inf" for a, b in zip(s, c,
                                                                                                     strict=True)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        {"cellpose": cellpose_worker, "stardist": stardist_worker}[sys.argv[2]](sys.argv[3], sys.argv[4])
    else:
        main()
