"""What the ``seglab`` commands share: progress on stderr, the generator driver, early checks of paths and options."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ..core.errors import InputError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_FILES_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: the shell's code for a process ended by SIGTERM (128 + 15): a scheduler's or `kill`'s stop
EXIT_TERMINATED = 143


class Status:
    """Progress on stderr: permanent lines, plus one overwritten line when stderr is a terminal."""

    def __init__(self) -> None:
        self.stream = sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0

    def transient(self, text: str, *, fallback: bool = False) -> None:
        """Overwrite the status line (TTY); elsewhere print it only when ``fallback``."""
        if self.tty:
            text = text[:150]
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)
        elif fallback:
            self.line(text)

    def line(self, text: str) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        print(text, file=self.stream, flush=True)

    def message(self, event) -> None:
        self.line(("warning: " if event.level == "warning" else "") + event.text)


def drive(gen, handle):
    """Run a core generator, passing each event to ``handle``; returns its result.

    The generator is closed on the way out (Ctrl-C included), so its cleanup runs.
    """
    try:
        while True:
            handle(next(gen))
    except StopIteration as fin:
        return fin.value
    finally:
        gen.close()


def check_output(path: str, inputs, flag: str) -> None:
    """Refuse an output that is an input or cannot be written, before any work (nothing is written)."""
    from ..core.io import check_output_path, ensure_not_input

    check_output_path(path, flag)
    ensure_not_input(path, inputs)


def check_input(path: str | None, flag: str, what: str = "a TIFF file", *, allow_empty: bool = False) -> None:
    """Refuse a missing, unreadable or special (FIFO, device) input file before heavy imports (an empty one too,
    unless ``allow_empty``: an empty boxes CSV is an image without objects)."""
    from ..core.io import check_regular_file

    if path is not None:
        try:
            check_regular_file(path, what, allow_empty=allow_empty)
        except InputError as exc:
            raise InputError(f"{flag} {exc}") from None


def check_tiff(path: str, flag: str) -> None:
    """An input TIFF's header: valid, and a declared size that fits in memory (nothing decoded).

    ND2, LIF and CZI files (by suffix) are only checked to be readable files here."""
    from ..core.io import FORMATS, probe_tiff

    check_input(path, flag)
    if FORMATS.get(Path(path).suffix.lower(), "tiff") != "tiff":
        return  # a microscope file: its reader checks it when it is read (before anything is written)
    try:
        probe_tiff(path)
    except InputError as exc:
        raise InputError(f"{flag} {exc}") from None


def add_reading(p: argparse.ArgumentParser, what: str = "the image") -> None:
    """``--scene``, ``--channel`` and ``--axes``: which part of a microscope file to read, and how."""
    p.add_argument("--scene", default=None, metavar="N|NAME",
                   help=f"which scene of {what} to read: an OME-TIFF series, an ND2 position, a LIF image (index "
                        "or name) or a CZI scene; index from 0 (default: the first)")
    p.add_argument("--channel", type=int, default=None, metavar="N",
                   help=f"read only this channel of {what} (index from 0; default: all channels)")
    p.add_argument("--axes", default=None, metavar="AXES",
                   help=f"the axes of {what} in the file's order, one of T, Z, C, Y, X per dimension (e.g. CYX "
                        "for planes that are channels), instead of what the file says")


def check_output_folder(folder: str) -> None:
    """The output folder exists and takes files, or its nearest existing parent does (nothing is created)."""
    from ..core.io import check_output_path

    path = Path(folder).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"--output-dir {folder}: exists and is not a folder")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"--output-dir {folder}: {probe} is not a folder")
    try:
        check_output_path(probe / "manifest.csv")
    except InputError:
        raise InputError(f"--output-dir {folder}: folder {probe} does not accept new files "
                         "(read-only or no permission)") from None


def plain_json(value):
    """Replace NaN/Inf (not valid JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


# ----------------------------------------------------------------------------- options


class HelpFormatter(argparse.HelpFormatter):
    """Help text with "(default: ...)" where a default is worth telling."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not quiet and "%(default)" not in text and "(default:" not in text:
            text += " (default: %(default)s)"
        return text


def add_common(sub, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A sub-command's parser, with ``--debug``."""
    p = sub.add_parser(name, help=help_text, description=description, formatter_class=HelpFormatter)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an unexpected error")
    return p


def option_flag(name: str, setting) -> str:
    """The command-line option of settings field ``name`` ("--time-limit"; a Setting may name another)."""
    return setting.flag or "--" + name.replace("_", "-")


def add_settings(parser: argparse.ArgumentParser, cls, names, *, required=()) -> None:
    """One option per field ``names`` of settings dataclass ``cls``, from the fields' Setting metadata.

    Help, metavar, type and default come from the declaration (see
    :mod:`napari_seglab.core.train._config`); ranges and choices are checked by the
    core's ``check()``, so an out-of-range value gets the core's message.
    """
    from ..core.settings import field_default, settings_of

    declared = settings_of(cls)
    for name in names:
        s = declared[name]
        help_text = s.help + (f" (default: {s.auto})" if s.auto else "")
        if s.kind is bool:  # a switch with an "auto" default can also be turned off (--no-...)
            action = argparse.BooleanOptionalAction if s.auto else "store_true"
            parser.add_argument(option_flag(name, s), dest=name, action=action, help=help_text,
                                default=None if s.auto else False)
            continue
        metavar = s.metavar or ("{" + ",".join(s.choices) + "}" if s.choices else None)
        parser.add_argument(option_flag(name, s), dest=name, help=help_text, metavar=metavar,
                            required=name in required, type=s.kind if s.kind in (int, float) else None,
                            default=None if name in required else field_default(cls, name))


def options_from_args(args: argparse.Namespace, cls, names):
    """The settings dataclass ``cls`` the options ``names`` describe, checked by the core (SettingError)."""
    return cls(**{name: getattr(args, name) for name in names if getattr(args, name) is not None}).check()


#: device files of a GPU driver (NVIDIA, AMD ROCm): where one exists, an "auto" run may use the GPU
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def leave_out_triton(request: str | None = "auto") -> bool:
    """Keep triton, the GPU kernel compiler, out of a command that computes on the CPU; True when it did.

    segmentation-models-pytorch imports torchvision, whose ``ops`` import ``torch._dynamo``, which
    imports triton whenever it is installed (torch's CUDA wheels bring it on Linux): 0.07 GiB resident
    (``seglab predict`` of a 2048x2048 image block by block: peak RSS 977624 kB with it, 901396 kB
    without), and nothing SegLab runs uses it (no ``torch.compile``). Marking it missing
    (``sys.modules["triton"] = None``) sends those imports down their no-triton path, as on a machine
    without it. Only for ``request`` "cpu", or "auto" on a machine without a GPU driver's device files
    (torch is not imported to ask: a command checks its paths before it pays for torch), and only
    before torchvision is imported.
    """
    if "triton" in sys.modules or "torchvision" in sys.modules:
        return False
    request = (request or "auto").lower()
    if request != "cpu" and not (request == "auto" and not any(os.path.exists(f) for f in GPU_DEVICE_FILES)):
        return False
    sys.modules["triton"] = None
    return True
