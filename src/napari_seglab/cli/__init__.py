"""The ``seglab`` command line: train, predict, evaluate, export, batch and info.

A thin front over :mod:`napari_seglab.core`: parse arguments, drive the core
generators, print progress on stderr and results on stdout. One module per
command (:mod:`.train`, :mod:`.predict`, :mod:`.batch`, :mod:`.evaluate`);
the shared checks and the progress line live in :mod:`.common`.

Exit codes: 0 success; 1 unexpected failure (``--debug`` shows the
traceback); 2 bad input (one line ``seglab: error: <reason>`` on stderr);
3 some files of a batch failed; 130 interrupted (Ctrl-C); 143 terminated
(SIGTERM, as a cluster scheduler or ``kill`` sends it). Outputs are written
atomically and both signals unwind the run, so a stopped run never leaves a
half-written file or a hidden temporary one, and no command writes over one of
its input files.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
import traceback

from .. import __version__
from ..core.errors import InputError, SeglabError
from . import batch as _batch
from . import evaluate as _evaluate
from . import predict as _predict
from . import train as _train
from .batch import cmd_batch
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, add_common
from .evaluate import cmd_evaluate, cmd_export, cmd_info
from .predict import cmd_predict
from .train import cmd_train

__all__ = ["build_parser", "cmd_batch", "cmd_evaluate", "cmd_export", "cmd_info", "cmd_predict", "cmd_train",
           "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``seglab`` command (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog="seglab", description="Train, apply and evaluate microscopy segmentation models (napari-seglab).",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad input, 3 some batch files failed, 130 interrupted, "
               "143 terminated (SIGTERM).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # the handlers are looked up here, at build time, so that a replaced cmd_* is the one that runs
    commands = (
        ("train", "train a model on images and painted labels",
         "Train a segmentation model on TIFF images and label TIFFs; saves the best model (and <stem>.last.pt "
         "with the optimizer state, for --init).", _train.add_arguments, cmd_train),
        ("predict", "segment one image with a trained model",
         "Predict labels (and optionally probabilities and boxes) for one TIFF image.", _predict.add_arguments,
         cmd_predict),
        ("evaluate", "compare predicted labels or boxes with ground truth",
         "Print Dice, IoU and instance scores (AP, F1, precision, recall at IoU 0.5/0.75/0.9) as JSON; with "
         "--pred-boxes, box AP@0.5/0.75, AP@[.5:.95], precision, recall, F1 and the count error as a table.",
         _evaluate.add_evaluate_arguments, cmd_evaluate),
        ("export", "export a model to TorchScript, ONNX or bioimage.io",
         "Export a checkpoint: input (B, C, Y, X) float32 percentile-normalised, output (B, K, Y, X) class "
         "probabilities.", _evaluate.add_export_arguments, cmd_export),
        ("batch", "segment every image of a folder",
         "Predict every matching TIFF of a folder, locally or on a Dask cluster; writes <stem>_labels.tif "
         "(+ probabilities, objects CSV), manifest.csv and summary.csv.", _batch.add_arguments, cmd_batch),
        ("info", "describe a checkpoint", "Print a checkpoint's description and metadata as JSON.",
         _evaluate.add_info_arguments, cmd_info),
    )
    for name, help_text, description, add_arguments, func in commands:
        p = add_common(sub, name, help_text, description)
        add_arguments(p)
        p.set_defaults(func=func)
    return parser


def _error(message) -> None:
    from ..core.settings import SettingError

    if isinstance(message, SettingError):  # name the option as well as the setting
        message = message.with_flag()
    print(f"seglab: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the ``seglab`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid text must never end a run
        if hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # a closed or odd stream
                stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        _error("choose a command: train, predict, evaluate, export, batch or info")
        return EXIT_USAGE
    started = time.monotonic()
    try:
        with _sigterm_unwinds():
            return int(args.func(args) or EXIT_OK)
    except InputError as exc:
        _error(exc)
        return EXIT_USAGE
    except OSError as exc:  # a file or folder the user named: missing, no permission, full, read-only...
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        fresh_line = "\n" if sys.stderr.isatty() and not terminated else ""  # after the terminal's ^C
        print(f"{fresh_line}seglab: {'terminated' if terminated else 'interrupted'} after "
              f"{time.monotonic() - started:.0f} s; no partial files were written", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except SeglabError as exc:
        _error(exc)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a command-line tool
        return _unexpected(exc, args.debug)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run unwinds as it does on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """While a command runs, SIGTERM raises :class:`_Terminated` instead of killing the process.

    Killed outright, a process leaves its atomic writers' temporary files behind (a block-wise
    prediction holds a hidden ``.NAME.tmp-*`` store for its whole run). Only the default action is
    replaced, only from the main thread, and the previous handler comes back afterwards.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def _raise(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise _Terminated()

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _unexpected(exc: Exception, debug: bool) -> int:
    """An error nobody foresaw: one line (the traceback with --debug); out of memory is the user's sizes."""
    from ..core.device import is_oom

    if debug:
        traceback.print_exc()
    hint = "" if debug else " (run with --debug to see the traceback)"
    if is_oom(exc):  # sizes the user chose (image, patch, batch, tile) do not fit: exit 2, not a bug
        _error("out of memory; try a smaller --batch-size, --patch or --tile, or --device cpu" + hint)
        return EXIT_USAGE
    first = (str(exc).splitlines() or [""])[0][:300]
    _error(f"unexpected {type(exc).__name__}: {first}{hint}")
    return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
