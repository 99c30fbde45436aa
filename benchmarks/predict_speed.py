"""Prediction speed on a 2048x2048 image: seglab vs a raw forward pass vs MONAI's sliding window.

Same U-Net (smp Unet-resnet34, 1 channel, random weights), same CPU threads, same run:

* raw:    one ``model(x)`` over the whole normalised image (float32, eager, no tiling);
* seglab: ``iter_predict_image`` end to end (normalisation, tiling plan, blending, labels);
* monai:  ``monai.inferers.sliding_window_inference`` with roi 256, overlap 0.25,
          gaussian mode (its defaults otherwise), plus the same argmax.

Goals: seglab at most 1.15x the raw forward; at least 2x faster than MONAI.
The last line prints both ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, nuclei_like, random_unet_checkpoint  # noqa: E402

from napari_seglab.core.data import Normalization  # noqa: E402
from napari_seglab.core.events import drive
from napari_seglab.core.models import load_checkpoint  # noqa: E402
from napari_seglab.core.predict import iter_predict_image, load_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="resnet34")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    img = nuclei_like((args.size, args.size))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_unet_checkpoint(Path(tmp) / "m.pt", encoder=args.encoder)
        lm = load_model(ckpt, args.device)  # seglab's own policy (channels_last on the CPU)
        raw_model = load_checkpoint(ckpt).build(lm.device)  # plain eager float32 model
    device = lm.device
    x = torch.from_numpy(Normalization().apply(img[None].astype(np.float32)))[None].to(device)

    def raw():
        with torch.inference_mode():
            out = raw_model(x)
            out.argmax(1) if out.shape[1] > 1 else (out > 0)
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_raw = best_of(raw, args.repeats)

    def ours():
        drive(iter_predict_image(lm, img))
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_ours = best_of(ours, args.repeats)
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("monai is not installed: pip install monai (make bench installs it)")
        return 1

    def monai():
        with torch.inference_mode():
            out = sliding_window_inference(x, roi_size=(256, 256), sw_batch_size=1, predictor=raw_model,
                                           overlap=0.25, mode="gaussian")
            _ = out > 0
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_monai = best_of(monai, args.repeats)
    print(f"image {args.size}x{args.size}, Unet-{args.encoder}, device {device}, {torch.get_num_threads()} threads")
    print(f"raw forward: {t_raw:.2f} s   seglab iter_predict_image: {t_ours:.2f} s   MONAI sliding window: {t_monai:.2f} s")
    print(f"seglab/raw {t_ours / t_raw:.2f}x (goal <= 1.15x); MONAI/seglab {t_monai / t_ours:.2f}x (goal >= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
