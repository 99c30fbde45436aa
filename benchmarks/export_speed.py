"""onnxruntime against torch eager on the CPU: one 2048x2048 forward of the default CPU U-Net.

The network is the "fast" preset SegLab trains on a CPU (3-level ResNet-18 U-Net, random weights:
speed does not depend on them), exported to ONNX as ``seglab export`` writes it, and run on a
(1, 1, 2048, 2048) float32 input: by torch eager as SegLab predicts (float32, channels_last,
inference mode) and by onnxruntime's CPU provider, both on the same number of threads. The two
outputs are compared first. Each time is the best of ``--repeats`` runs after a warm-up.

The last line prints the onnxruntime / torch-eager time ratio (below 1: onnxruntime is faster).

    python benchmarks/export_speed.py [--size 2048] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import build_model, preset_spec, save_checkpoint
    from napari_seglab.core.models._traced import as_checkpoint, exportable_model, onnx_bytes

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = preset_spec("fast")
    model, _ = build_model(spec)
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "m.pt", model, {"model": spec.to_dict(), "label_mode": "scribbles",
                                                              "normalization": Normalization().to_dict()})
        ckpt = as_checkpoint(path)
    net = exportable_model(ckpt)
    data = onnx_bytes(net, torch.rand(1, 1, 64, 64), ckpt)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    x = torch.rand(1, 1, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    net_cl = net.to(memory_format=torch.channels_last)

    def run_torch():
        with torch.inference_mode():
            return net_cl(x_cl)

    def run_ort():
        return session.run(None, {name: x.numpy()})[0]

    want, got = run_torch().numpy(), run_ort()  # also the warm-up
    diff = float(np.max(np.abs(got - want)))
    t_torch = best_of(run_torch, args.repeats)
    t_ort = best_of(run_ort, args.repeats)

    # end to end, as `seglab predict --runtime torch|onnx` runs: load (the ONNX export included) + predict
    import time

    from napari_seglab.core.api import predict_image
    from napari_seglab.core.predict import load_model

    image = (np.random.default_rng(0).random((args.size, args.size)) * 1000).astype(np.uint16)
    whole = {}
    for runtime in ("torch", "onnx"):
        t0 = time.perf_counter()
        lm = load_model(ckpt, "cpu", runtime=runtime)
        loaded = time.perf_counter() - t0
        predict_image(lm, image)
        whole[runtime] = (loaded, time.perf_counter() - t0)
    print(f"network: {spec.family} {spec.arch}/{spec.encoder} (fast preset), input (1, 1, {args.size}, {args.size}), "
          f"{args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"largest difference onnxruntime - torch: {diff:.1e}")
    print(f"torch eager (float32, channels_last): {t_torch:.2f} s; onnxruntime CPU: {t_ort:.2f} s")
    print("load + seglab predict, torch: {:.2f} s (load {:.2f} s); onnx: {:.2f} s (load and export {:.2f} s)".format(
        whole["torch"][1], whole["torch"][0], whole["onnx"][1], whole["onnx"][0]))
    print(f"onnxruntime / torch-eager time on the CPU, {args.size}x{args.size}: {t_ort / t_torch:.2f}")


if __name__ == "__main__":
    main()
