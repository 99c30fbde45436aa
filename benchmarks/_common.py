"""Helpers shared by the benchmark scripts (not a test module)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def random_unet_checkpoint(path: Path, encoder: str = "resnet34", n_classes: int = 2, in_channels: int = 1) -> Path:
    """Save a random-init smp Unet as a seglab checkpoint (weights do not matter for speed/memory)."""
    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    spec = ModelSpec(family="unet", arch="Unet", encoder=encoder, in_channels=in_channels, n_classes=n_classes)
    model, _ = build_model(spec)
    meta = {"model": spec.to_dict(), "label_mode": "scribbles", "normalization": Normalization().to_dict(),
            "patch": 256}
    return save_checkpoint(path, model, meta)


def best_of(fn, repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def nuclei_like(shape, seed=0) -> np.ndarray:
    """A quick uint16 image with blobs (for speed and memory runs, content is irrelevant)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(300, 30, shape).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


def random_forest_foreground(train_img: np.ndarray, labels: np.ndarray, test_img: np.ndarray,
                             seed: int = 0) -> np.ndarray:
    """The ilastik approach: scikit-image multiscale features + a random forest, trained on ``labels``
    (1 = background, 2 = foreground, 0 = not annotated); returns the (Y, X) bool foreground of ``test_img``."""
    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    def feats(im):
        im = im.astype(np.float32)
        lo, hi = np.percentile(im, [1, 99.8])
        return multiscale_basic_features((im - lo) / (hi - lo), sigma_min=1, sigma_max=16)

    clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05, random_state=seed)
    clf = fit_segmenter(labels, feats(train_img), clf)
    return predict_segmenter(feats(test_img), clf) == 2


def machine() -> str:
    """The CPU a timed benchmark ran on, for its log: model name, cores, native bfloat16. A time budget buys
    very different step counts on different CPUs (a quiet Intel Xeon with AMX: about 11 training steps a
    second; the AMD EPYC of the earlier sparse benchmarks: 1.3-2.3), so figures at a budget compare only on the
    same machine."""
    from napari_seglab.core.batch import usable_cpus
    from napari_seglab.core.device import cpu_bf16_supported

    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {usable_cpus()} cores, {'native' if cpu_bf16_supported() else 'no native'} bfloat16"
