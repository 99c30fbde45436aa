"""StarDist 3D from scratch within a wall-clock budget: the peer of ``quality_3d.py``, run in StarDist's own venv.

Imports only numpy at the top (the venv holds stardist 0.9 + tensorflow-cpu, not SegLab):

    /path/to/stardist-venv/bin/python benchmarks/stardist3d_peer.py JOB.npz OUT.npz

``JOB.npz``: ``train_image`` / ``train_labels`` (Z, Y, X), ``test_image``, ``budget`` (seconds, set-up
included), ``seed`` and ``anisotropy`` (z step / pixel size). The recipe is StarDist's 3D example's:
96 rays on a golden spiral stretched by the anisotropy, grid (1, 2, 2) for an anisotropic stack, batch 2,
its default U-Net, patches of the largest side (up to 64) the U-Net takes that fits the training stack; flips of y / x
and 90-degree turns in the plane; the training stack doubles as validation data (a user with one painted
stack has no other); default thresholds (optimising them would spend the budget). ``OUT.npz``: ``labels``
(the test stack's, int32), ``steps``, ``seconds`` (training), ``predict_seconds``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np


def main(job: str, out: str) -> None:
    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist import Rays_GoldenSpiral, fill_label_holes
    from stardist.models import Config3D, StarDist3D

    d = np.load(job)
    budget, seed, aniso = float(d["budget"]), int(d["seed"]), float(d["anisotropy"])
    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(seed)
    np.random.seed(seed)
    t0 = time.monotonic()
    x = normalize(d["train_image"].astype(np.float32), 1, 99.8)
    y = fill_label_holes(d["train_labels"].astype(np.int32))
    anisotropy = (aniso, 1.0, 1.0)
    grid = tuple(1 if a > 1.5 else 2 for a in anisotropy)
    # the U-Net's 2 poolings times the grid divide each side
    patch = tuple(min(64, s // (4 * g) * (4 * g)) for s, g in zip(x.shape, grid, strict=True))
    conf = Config3D(rays=Rays_GoldenSpiral(96, anisotropy=anisotropy), grid=grid, anisotropy=anisotropy,
                    n_channel_in=1, train_patch_size=patch, train_batch_size=2, train_tensorboard=False,
                    use_gpu=False)
    steps = 0

    class Budget(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            nonlocal steps
            steps += 1
            if time.monotonic() - t0 > budget:
                self.model.stop_training = True

    def augment(img, lbl):
        k = np.random.randint(4) if img.shape[1] == img.shape[2] else 2 * np.random.randint(2)
        img, lbl = np.rot90(img, k, axes=(1, 2)), np.rot90(lbl, k, axes=(1, 2))
        for axis in (1, 2):
            if np.random.rand() < 0.5:
                img, lbl = np.flip(img, axis), np.flip(lbl, axis)
        return np.ascontiguousarray(img), np.ascontiguousarray(lbl)

    with tempfile.TemporaryDirectory() as tmp:
        model = StarDist3D(conf, name="peer", basedir=tmp)
        model.prepare_for_training()
        model.callbacks.append(Budget())
        model.train([x], [y], validation_data=([x], [y]), augmenter=augment, epochs=10**6, steps_per_epoch=20)
        seconds = time.monotonic() - t0
        t1 = time.monotonic()
        labels, _ = model.predict_instances(normalize(d["test_image"].astype(np.float32), 1, 99.8))
    np.savez(out, labels=np.asarray(labels, np.int32), steps=steps, seconds=seconds,
             predict_seconds=time.monotonic() - t1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
