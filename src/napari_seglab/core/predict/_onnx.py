"""ONNX Runtime as a network runtime: a checkpoint's network (or a package's ONNX weights) behind a module.

``--runtime onnx`` exports the checkpoint's network, as it is (logits, no activation), to ONNX in memory
and runs it with onnxruntime's CPU provider; everything else (tiling, blending, decoding) stays SegLab's.
On this project's 2-core CPU the fast and accurate U-Nets ran 1.4-1.8x faster than torch eager
(float32, channels_last) at 1024-2048 px (``benchmarks/export_speed.py``); the export costs about 2 s
per load. ``auto``, the default, is :class:`AutoNetwork`: torch until a job is large enough for the
conversion to pay back, then onnxruntime.
"""

from __future__ import annotations

import copy
import importlib.util
import threading

import numpy as np
import torch
from torch import nn

from ..device import release_free_memory
from ..errors import InputError

RUNTIMES = ("torch", "onnx", "auto")


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxNetwork(nn.Module):
    """An onnxruntime session as a module: (B, C, Y, X) float32 in, its first output out (CPU).

    ``threads``: onnxruntime's intra-op threads (default: torch's, so a Dask worker's share holds).
    """

    def __init__(self, data: bytes, threads: int | None = None):
        super().__init__()
        if not onnxruntime_available():
            raise InputError("ONNX needs onnxruntime: pip install 'napari-seglab[export]'")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.name: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(out).to(x.device)

    def __deepcopy__(self, memo):  # a session cannot be copied; it holds no torch state to move
        return self


#: pixels a job predicts with torch before the "auto" runtime converts the network to ONNX. Converting
#: costs 2-2.5 s and onnxruntime then takes 0.57-0.71x torch's time per pixel on the CPU (about 0.5 s less
#: per megapixel with the fast U-Net, benchmarks/export_speed.py), so the conversion pays back within about
#: as many pixels again: a small job never pays for it, a batch or a large image gains
AUTO_ONNX_PIXELS = 4_000_000


#: the largest tile (pixels) the "auto" runtime leaves with torch, whatever the job's size: block by block
#: the CPU runs 256 px tiles. There onnxruntime is faster only with its memory arena (CPU time per tile:
#: torch 1.2-1.5x the arena's), which keeps the largest run's activations for good, out of the reach of the
#: block's decoding (2048x2048 block by block, 256 px tiles: peak RSS 1.089 GiB against torch's 0.932 GiB).
#: Without the arena and the memory pattern it held 0.036 GiB over torch's and its runs took 1.17-1.25x the
#: arena's CPU time (the page faults of fresh buffers): not worth the conversion. Larger tiles switch
AUTO_TORCH_TILE_PIXELS = 256 * 256


class AutoNetwork(nn.Module):
    """The "auto" runtime: the torch network until it has predicted ``switch_pixels`` pixels, then the same
    network converted once to ONNX and run by onnxruntime (on the CPU).

    ``converted`` says which one runs now. The switch happens between two tiles larger than
    :data:`AUTO_TORCH_TILE_PIXELS` (smaller ones stay with torch), once, under a lock (a Dask worker's
    threads may share a cached model); the conversion runs outside inference mode. It exports the torch
    network itself, then lets it go (``network`` is None from then on) and gives the freed memory back,
    so that one copy of the weights is held at a time. The checkpoint is kept for its description only,
    without its weights.
    """

    def __init__(self, network: nn.Module | None, ckpt, switch_pixels: int = AUTO_ONNX_PIXELS):
        super().__init__()
        self.network = network
        self.switch_pixels = int(switch_pixels)
        self.pixels = 0
        if ckpt.state_dict:  # the network holds the weights; a second copy would stay for the whole job
            ckpt = type(ckpt)(ckpt.info, {}, path=ckpt.path)
        self._state = {"ckpt": ckpt, "session": None, "lock": threading.Lock()}  # not submodules

    @property
    def converted(self) -> bool:
        return self._state["session"] is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._state
        tile = int(x.shape[-2]) * int(x.shape[-1])
        if state["session"] is None and self.pixels >= self.switch_pixels and tile > AUTO_TORCH_TILE_PIXELS:
            with state["lock"]:
                if state["session"] is None:
                    self._convert()
        network = self.network  # read before the session: the switch sets the session, then drops this
        session = state["session"]
        if session is not None:
            return session(x)
        self.pixels += int(x.shape[0]) * tile
        return network(x)

    def _convert(self) -> None:
        with torch.inference_mode(False):
            self._state["session"] = onnx_network(self._state["ckpt"], self.network)
        self.network = None
        release_free_memory()

    def __deepcopy__(self, memo):  # a copy (the CPU fallback) runs what this one runs now
        if self.converted:
            copied = AutoNetwork(None, self._state["ckpt"], self.switch_pixels)
            copied._state = self._state  # the session cannot be copied; it is shared
            return copied
        return AutoNetwork(copy.deepcopy(self.network, memo), self._state["ckpt"], self.switch_pixels)


def use_onnx(runtime: str, device: torch.device, family) -> bool:
    """Whether a checkpoint of ``family`` may run under onnxruntime: "onnx" (refused where it cannot), "auto"
    (on the CPU, for an exportable family, when onnxruntime is installed; :class:`AutoNetwork` then switches
    once the job is large enough) or "torch"."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return False
    able = family.exportable and family.semantic
    if runtime == "onnx":
        if not able:
            raise InputError(f"the onnx runtime runs per-pixel networks (U-Net, FCN), not {family.label} models")
        if device.type != "cpu":
            raise InputError("the onnx runtime runs on the CPU; use --device cpu (or --runtime torch on a GPU)")
        if not onnxruntime_available():
            raise InputError("--runtime onnx needs onnxruntime: pip install 'napari-seglab[export]'")
        return True
    # found, not imported: onnxruntime holds 0.02 GiB resident, for nothing until (unless) the job switches;
    # the export needs onnx too, which a missing one would only say halfway through the job
    return able and device.type == "cpu" and all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))


def onnx_network(ckpt, network: nn.Module | None = None) -> OnnxNetwork:
    """The checkpoint's network (logits, as SegLab's torch path gives them) under onnxruntime.

    ``network``: the checkpoint's network already built (the "auto" runtime's), exported instead of a
    new one built from the checkpoint's weights.
    """
    from ..models import check_exportable, exportable_model, onnx_bytes

    if network is None:
        network = exportable_model(ckpt).network  # checks the family can be exported
    else:
        check_exportable(ckpt)
    side = 64
    example = torch.rand(1, ckpt.spec.in_channels, side, side)
    return OnnxNetwork(onnx_bytes(network, example, ckpt, output_name="logits")).eval()
