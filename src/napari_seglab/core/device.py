"""Device choice (CUDA, then MPS, then CPU) and the precision policy."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from dataclasses import dataclass

import torch

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(request: str = "auto") -> torch.device:
    """Return the torch device for ``request`` ("auto", "cpu", "cuda", "cuda:1", "mps").

    ``auto`` picks CUDA, then MPS, then the CPU. Asking for a device that is
    not there raises :class:`InputError` instead of failing later in a kernel.
    """
    request = (request or "auto").lower()
    if request == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(request)
    if request == "mps":
        if not _mps_available():
            raise InputError("device 'mps' was asked for but Apple MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    if request == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {request!r}; choose one of {', '.join(DEVICES)}")


@dataclass(frozen=True)
class Precision:
    """How a forward pass runs on a device.

    CUDA: float16 autocast (mixed precision). MPS: float32. CPU: float32 with
    channels_last memory format, or bfloat16 autocast when asked for.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        """Context manager for the forward pass."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def precision_for(device: torch.device, *, bf16_cpu: bool = False, training: bool = False) -> Precision:
    """The precision policy for ``device`` (see :class:`Precision`)."""
    if device.type == "cuda":
        return Precision(device, torch.float16, channels_last=True)
    if device.type == "mps":
        return Precision(device, None, channels_last=False)
    dtype = torch.bfloat16 if bf16_cpu and not training else None
    return Precision(device, dtype, channels_last=not training)


def cpu_bf16_supported() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where autocast pays off.

    Without it PyTorch emulates bfloat16 and a training step gets slower, not faster.
    """
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            flags = ""
            with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
                flags = f.read(200_000)
            # oneDNN also says yes for plain AVX512 (emulated, slow): ask for the native instructions
            return not flags or any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    except (AttributeError, RuntimeError):
        pass
    return False


def describe(device: torch.device) -> str:
    """A short human description, e.g. 'cuda:0 (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


#: how allocators say they ran out, in lower case: PyTorch's CUDA/MPS/HIP "out of memory", its CPU
#: allocator's "can't allocate memory", numpy's "unable to allocate", cuBLAS/cuDNN "ALLOC_FAILED" and
#: errno 12's "cannot allocate memory"
OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "unable to allocate",
             "alloc_failed", "not enough memory", "failed to allocate")


def is_oom(error: BaseException) -> bool:
    """True when ``error`` says memory ran out, however it is worded: the one classification of out-of-memory.

    A :class:`MemoryError` (numpy's ``_ArrayMemoryError`` too), torch's
    ``OutOfMemoryError``, an ``OSError`` with errno ENOMEM, and a RuntimeError
    whose text is one of :data:`OOM_WORDS` (CUDA, MPS, the CPU allocator, cuBLAS,
    cuDNN); an error raised from one of these (``raise ... from``) counts too.
    """
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
            return True
        if isinstance(error, OSError) and error.errno == errno.ENOMEM:
            return True
        if isinstance(error, RuntimeError) and any(w in str(error).lower() for w in OOM_WORDS):
            return True
        error, seen = error.__cause__, seen + 1
    return False


#: niceness of the threads that run SegLab jobs behind a GUI (0 = normal, 19 = lowest)
BACKGROUND_NICE = 10


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> bool:
    """Give the calling thread (and the torch threads it starts later) a lower CPU priority.

    For jobs that run behind a GUI: the GUI thread and the OpenGL driver's
    threads then get the CPU first when everything competes for the cores,
    while an idle GUI leaves the job all of it. Linux sets niceness per
    thread, and threads inherit it from the thread that creates them, so
    torch's intra-op threads started from this thread follow. Elsewhere (or
    when not allowed) it does nothing and returns False. An unprivileged
    thread cannot raise its priority again, so call it only in threads that
    run nothing but such jobs.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Freed numpy and torch buffers below glibc's mmap threshold stay in the process's heap, so a loop
    over blocks would hold the high water of every block; the block loops call this between blocks.
    """
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
                _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
