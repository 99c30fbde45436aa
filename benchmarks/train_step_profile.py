"""Where a CPU training step's time goes, per preset: patch sampling + augmentation vs forward/backward.

For each U-Net preset, on the sample's dense instance labels (128 px patches,
batch 8): the median time of ``PatchSampler.batch`` and of one optimiser step
(forward, loss, backward, AdamW) in float32 and in bfloat16 autocast, with
1 and with all cores. The last line is the speed-up of the default ('fast')
preset over 'accurate' at the best setting of each.

    python benchmarks/train_step_profile.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_seglab.core.data import Normalization, PatchSampler, Sample
from napari_seglab.core.labels import make_target
from napari_seglab.core.models import PRESETS, build_model, preset_spec, segmentation_loss

ROOT = Path(__file__).resolve().parents[1] / "sample_data"


def median_time(fn, n: int) -> float:
    times = []
    for _ in range(n + 2):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))  # the first calls warm up


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    img = tifffile.imread(ROOT / "nuclei_train.tif").astype(np.float32)
    inst = tifffile.imread(ROOT / "nuclei_train_instances.tif")
    sample = Sample(Normalization().apply(img[None]), make_target(inst, "instances"))
    sampler = PatchSampler([sample], 128, np.random.default_rng(0), favour=0.3)
    t_sample = median_time(lambda: sampler.batch(8), args.steps)
    print(f"patch sampling + augmentation, batch 8 of 128 px: {t_sample * 1000:.1f} ms")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    best = {}
    for name in PRESETS:
        model, _ = build_model(preset_spec(name, 1, 3))
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), 3e-3)
        x, y, _ = sampler.batch(8)
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        yt = torch.from_numpy(y)
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            for bf16 in (False, True):
                def step(model=model, opt=opt, bf16=bf16, xt=xt, yt=yt):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss = segmentation_loss(model(xt).float(), yt)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

                t = median_time(step, args.steps)
                best[name] = min(best.get(name, 1e9), t)
                print(f"{name:9s} {threads} thread(s) {'bf16' if bf16 else 'fp32'}: step {t:.3f} s "
                      f"(sampling is {t_sample / (t + t_sample):.0%} of step + sampling)", flush=True)
    print(f"fast vs accurate, best setting of each: {best['accurate'] / best['fast']:.1f}x the steps per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
