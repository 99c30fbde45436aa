"""StarDist 3D from scratch within a wall-clock budget: the peer of ``quality_3d.py``, run in StarDist's own venv.

Imports only numpy (and ``peers.py``'s StarDist helpers, numpy-only at import) at the top (the venv
holds stardist 0.9 + tensorflow-cpu, not SegLab):

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

import sys

import numpy as np
from peers import stardist_setup, stardist_train_and_predict  # numpy-only at import, like this file


def main(job: str, out: str) -> None:
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D, StarDist3D

    d, x, y, t0 = stardist_setup(job)
    anisotropy = (float(d["anisotropy"]), 1.0, 1.0)
    grid = tuple(1 if a > 1.5 else 2 for a in anisotropy)
    # the U-Net's 2 poolings times the grid divide each side
    patch = tuple(min(64, s // (4 * g) * (4 * g)) for s, g in zip(x.shape, grid, strict=True))
    conf = Config3D(rays=Rays_GoldenSpiral(96, anisotropy=anisotropy), grid=grid, anisotropy=anisotropy,
                    n_channel_in=1, train_patch_size=patch, train_batch_size=2, train_tensorboard=False,
                    use_gpu=False)

    def augment(img, lbl):
        k = np.random.randint(4) if img.shape[1] == img.shape[2] else 2 * np.random.randint(2)
        img, lbl = np.rot90(img, k, axes=(1, 2)), np.rot90(lbl, k, axes=(1, 2))
        for axis in (1, 2):
            if np.random.rand() < 0.5:
                img, lbl = np.flip(img, axis), np.flip(lbl, axis)
        return np.ascontiguousarray(img), np.ascontiguousarray(lbl)

    stardist_train_and_predict(StarDist3D, conf, d, x, y, augment, t0, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
