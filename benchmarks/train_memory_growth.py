"""Resident memory over 1000 training steps: does a long training leak?

A tiny U-Net (resnet18, 64x64 patches, batch 2, 100 steps per epoch, 10
epochs) trains on synthetic nuclei scribbles (``make_nuclei((128, 128))``)
through :func:`napari_seglab.core.train.iter_train`, writing its best checkpoint
as it goes and (unless ``--no-preview``) a live preview every 100 steps, as
the Train widget does. The resident set size of this process is sampled at
step 50 (the baseline: after warm-up, when the allocator pools and the
optimiser state exist), every 100 steps and at the end. The first epoch end
adds one-time buffers (validation, preview, checkpoint save; about 6% here),
so a second ratio, from the second epoch end on, isolates growth per step. A leak (history holding tensors,
previews kept, an autograd graph kept alive) shows as growth with steps.

    python benchmarks/train_memory_growth.py [--steps-per-epoch 100] [--epochs 10] [--quick]

Prints RSS every 100 steps, then, last, the growth ratio end / step 50
(goal about 1.0x; above 1.10x is flagged).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

BASELINE_STEP = 50
FLAG = 1.10


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc, else psutil)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--no-preview", action="store_true", help="no live preview every 100 steps")
    p.add_argument("--quick", action="store_true", help="200 steps (20 per epoch)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps_per_epoch = 20

    import torch

    from napari_seglab.core.events import TrainStep
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles
    from napari_seglab.core.train import TrainConfig, iter_train

    image, instances = make_nuclei((128, 128), seed=0)
    scribbles = make_scribbles(instances, seed=0)
    total = args.steps_per_epoch * args.epochs
    every = max(BASELINE_STEP, min(100, total // 4))
    samples: dict[int, int] = {}
    mb = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(label_mode="scribbles", encoder="resnet18", patch=64, batch_size=2,
                          steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, device="cpu",
                          model_out=str(Path(tmp) / "m.pt"), preview_every=0 if args.no_preview else 100)
        print(f"{total} steps: U-Net resnet18, patch 64, batch 2, {args.epochs} epochs of "
              f"{args.steps_per_epoch}, previews {'off' if args.no_preview else 'every 100 steps'}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        t0 = time.perf_counter()
        gen = iter_train([image], [scribbles], cfg, preview_plane=None if args.no_preview else image)
        try:
            while True:
                ev = next(gen)  # consumed and dropped, as a widget does after drawing it
                if isinstance(ev, TrainStep) and (ev.step == BASELINE_STEP or ev.step % every == 0):
                    samples[ev.step] = rss_bytes()
                    print(f"step {ev.step:5d}: RSS {samples[ev.step] / mb:7.1f} MB  loss {ev.loss:.3f}", flush=True)
        except StopIteration as fin:
            result = fin.value
        del gen
        end = rss_bytes()
        gc.collect()
        collected = rss_bytes()
    seconds = time.perf_counter() - t0
    if BASELINE_STEP not in samples:
        raise SystemExit(f"training ended before step {BASELINE_STEP}")
    base = samples[BASELINE_STEP]
    ratio = end / base
    print(f"trained {result.steps} steps in {seconds:.0f} s ({seconds / max(result.steps, 1) * 1000:.0f} ms/step); "
          f"history {len(result.history)} epochs")
    print(f"RSS at step {BASELINE_STEP}: {base / mb:.1f} MB; at the end: {end / mb:.1f} MB "
          f"(after gc.collect: {collected / mb:.1f} MB)")
    settled = [k for k in sorted(samples) if k >= 2 * args.steps_per_epoch]
    if len(settled) >= 2:  # past the one-time costs of the first epoch end: validation, preview, checkpoint save
        first, last = settled[0], settled[-1]
        print(f"after the first epoch end: step {first} -> step {last}: {samples[last] / samples[first]:.3f}x")
    flag = "  ** GROWTH ABOVE 1.10x **" if ratio > FLAG else ""
    print(f"memory growth end / step {BASELINE_STEP}: {ratio:.3f}x (goal ~1.0x, flag > {FLAG:.2f}x){flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
