"""Bookkeeping of a batch job: its folders and the run manifest (output names and object tables: :mod:`napari_seglab.core.batch._outputs`).

The manifest: one CSV row per input, written as the run goes.

``manifest.csv`` lives in the output folder. Its columns are
:data:`MANIFEST_COLUMNS`: ``input`` (path relative to the input folder, ``/``
separators), ``status`` (``ok`` | ``failed`` | ``skipped``), ``error``,
``seconds``, ``outputs`` (``;``-separated paths relative to the output folder;
names in ``input`` and ``outputs`` are quoted by :func:`quote_name`, so any name,
with ``;``, backslashes or bytes that are not UTF-8, reads back exactly),
``input_size`` and ``input_mtime`` (to notice an input changed since),
``model`` (checkpoint name, size and mtime: a new model redoes the file),
``started`` / ``finished`` (ISO 8601 timestamps) and ``reading`` (what was read of each
file: ``scene=1 channel=0 pixel_size=0.65``, empty for the defaults; another choice redoes the file) and
``blocks`` (empty for a file predicted whole; for a file predicted block by block ``block=1024 halo=128``,
`` dask-block-tasks`` when its blocks ran as tasks of a Dask cluster, and after ``;`` a note on its
measurements, such as objects too wide for the shape columns).
Manifests of earlier releases, without ``blocks`` or ``reading``, are read as the defaults.

The manifest never claims more than is on disk: a row is appended (and
fsync'ed) only after every output of its file was written atomically, and the
whole file is rewritten atomically at the start and at the end of a run, keeping
the rows of earlier runs for files this run has not (yet) redone: a run that fails
or stops never truncates the manifest of a good one. A run
killed mid-append leaves at worst a broken last line, which
:func:`read_manifest` ignores, so the file is simply redone on resume.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime
from pathlib import Path

from ..errors import InputError
from ..io import atomic_path, folder_path

MANIFEST_NAME = "manifest.csv"
SUMMARY_NAME = "summary.csv"
MANIFEST_COLUMNS = ("input", "status", "error", "seconds", "outputs", "input_size", "input_mtime", "model",
                    "started", "finished", "reading", "blocks")
#: the columns of manifests written before ``blocks``, and before ``reading``, were recorded
_EARLIER_COLUMNS = (MANIFEST_COLUMNS[:-1], MANIFEST_COLUMNS[:-2])
STATUSES = ("ok", "failed", "skipped")
SUMMARY_COLUMNS = ("input", "object_count", "total_area", "mean_area", "median_area", "min_area", "max_area")


# ----------------------------------------------------------------------------- folders


def check_folders(input_dir, output_dir) -> tuple[Path, Path]:
    """(input folder, output folder) resolved once (:func:`~napari_seglab.core.io._paths.folder_path`); every later path derives from them.

    Refuses a missing input folder, an output folder that is the input folder
    (under any name, links included) and an output path that is a file.
    """
    in_dir, out_dir = folder_path(input_dir), folder_path(output_dir)
    if not in_dir.is_dir():
        raise InputError(f"{input_dir}: no such input folder")
    if out_dir == in_dir:
        raise InputError(f"{output_dir}: the output folder is the input folder; choose another folder so "
                         "outputs never mix with the inputs")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder")
    return in_dir, out_dir


def make_folder(out_dir: Path) -> None:
    """Create the output folder (and parents); failures become InputError."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from exc


# ----------------------------------------------------------------------------- manifest


def now_iso() -> str:
    """The local time as an ISO 8601 string with seconds and UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def input_stamp(path: str | os.PathLike) -> tuple[str, str]:
    """(size in bytes, mtime in ns) of an input file as strings, for the manifest.

    An OME-Zarr input (a folder): the total size and the newest mtime of the folder and its metadata
    files (``zarr.json`` / ``.zarray`` / ``.zattrs`` / ``.zgroup``, at any depth), not every chunk.
    """
    path = Path(path)
    st = path.stat()
    if not path.is_dir():
        return str(st.st_size), str(st.st_mtime_ns)
    size, newest = 0, st.st_mtime_ns
    for name in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
        for meta in path.rglob(name):
            m = meta.stat()
            size, newest = size + m.st_size, max(newest, m.st_mtime_ns)
    return str(size), str(newest)


def quote_name(name: str) -> str:
    """A file name as manifest text that reads back exactly (:func:`unquote_name`).

    Bytes that are not UTF-8 (a name from another system) and control
    characters become ``\\xNN``; a backslash becomes ``\\\\`` and ``;`` (the
    separator of the ``outputs`` field) ``\\;``. Every other character stays
    as it is, so ordinary names read unchanged.
    """
    try:
        text = os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeError:  # a lone surrogate that did not come from the file system
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch in "\\;":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _unquote_parts(text: str, split: bool) -> list[str]:
    parts, raw, i = [], bytearray(), 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1:i + 2] in ("\\", ";"):
            raw += text[i + 1].encode()
            i += 2
            continue
        digits = text[i + 2:i + 4]
        if ch == "\\" and text[i + 1:i + 2] == "x" and len(digits) == 2 and all(
                c in "0123456789abcdefABCDEF" for c in digits):
            raw.append(int(digits, 16))
            i += 4
            continue
        if split and ch == ";":
            parts.append(os.fsdecode(bytes(raw)))
            raw = bytearray()
        else:
            raw += ch.encode("utf-8", "surrogateescape")
        i += 1
    parts.append(os.fsdecode(bytes(raw)))
    return parts


def unquote_name(text: str) -> str:
    """The file name that :func:`quote_name` turned into ``text``."""
    return _unquote_parts(text, split=False)[0]


def join_outputs(outputs: dict[str, str]) -> str:
    """Output paths (relative to the output folder) as one ``;``-separated manifest field (names quoted)."""
    return ";".join(quote_name(p) for p in outputs.values())


def split_outputs(field: str) -> list[str]:
    """The output paths of a manifest ``outputs`` field (inverse of :func:`join_outputs`)."""
    return [p for p in _unquote_parts(field or "", split=True) if p]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def manifest_row(row: dict) -> dict:
    """A row restricted to :data:`MANIFEST_COLUMNS`, with one-line text fields."""
    out = {key: row.get(key, "") for key in MANIFEST_COLUMNS}
    out["error"] = _one_line(out["error"] or "").encode("utf-8", "backslashreplace").decode("utf-8")
    out["input"] = quote_name(out["input"])
    if isinstance(out["outputs"], dict):
        out["outputs"] = join_outputs(out["outputs"])
    if isinstance(out["seconds"], float):
        out["seconds"] = f"{out['seconds']:.3f}"
    return out


def model_stamp(path: str | os.PathLike) -> str:
    """``name:size:mtime_ns`` of a checkpoint, for the manifest's ``model`` column."""
    st = Path(path).stat()
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def file_row(rel: str, status: str, outputs: dict[str, Path], output_dir: Path, stamp: tuple[str, str],
             model: str, *, error: str = "", seconds: float = 0.0, started: str | None = None,
             finished: str | None = None, reading: str = "", blocks: str = "") -> dict:
    """A manifest row for one input (``outputs``: the kinds written, absolute paths)."""
    now = now_iso()
    return {"input": rel, "status": status, "error": error, "seconds": seconds,
            "outputs": {k: p.relative_to(output_dir).as_posix() for k, p in outputs.items()},
            "input_size": stamp[0], "input_mtime": stamp[1], "model": model,
            "started": started or now, "finished": finished or now, "reading": reading, "blocks": blocks}


def read_manifest(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of an existing manifest keyed by ``input`` (the last row of an input wins).

    A missing or unreadable file gives ``{}``; rows with missing fields or an
    unknown status (a line cut short by a crash) are ignored.
    """
    path = Path(path)
    rows: dict[str, dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header) not in (MANIFEST_COLUMNS, *_EARLIER_COLUMNS):
                return {}
            columns = tuple(header)
            for fields in reader:
                if len(fields) != len(columns):
                    continue
                row = {"reading": "", "blocks": "", **dict(zip(columns, fields, strict=True))}
                if row["status"] not in STATUSES or not row["input"]:
                    continue
                row["input"] = unquote_name(row["input"])
                try:
                    datetime.fromisoformat(row["finished"])
                except ValueError:
                    continue
                rows[row["input"]] = row
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return rows


def read_summary(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of an existing ``summary.csv`` keyed by input name; ``{}`` when missing or unreadable."""
    rows: dict[str, dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("input") and None not in row:
                    rows[unquote_name(row["input"])] = row
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return rows


def is_complete(row: dict | None, outputs: dict[str, Path], output_dir: Path, stamp: tuple[str, str],
                model: str, reading: str = "") -> bool:
    """True when ``row`` proves the file was done with these outputs and is still done.

    ``outputs``: the planned output paths of this run (kind -> absolute path);
    ``stamp``: :func:`input_stamp` of the input now; ``model``:
    :func:`model_stamp` of this run's checkpoint. The row must say ``ok`` (or
    ``skipped``, an earlier resume of an ok file) for the same model, list
    exactly these outputs, every output must exist and be non-empty, and the
    input must not have changed size or modification time since; ``reading`` (the scene, channel and
    pixel size read) must be the row's.
    """
    if row is None or row.get("status") not in ("ok", "skipped") or row.get("model") != model:
        return False
    if row.get("reading", "") != reading:
        return False
    planned = [p.relative_to(output_dir).as_posix() for p in outputs.values()]
    listed = split_outputs(row.get("outputs", ""))
    if sorted(planned) != sorted(listed):
        return False
    if (row.get("input_size"), row.get("input_mtime")) != stamp:
        return False
    for p in outputs.values():
        try:
            if p.stat().st_size == 0:
                return False
        except OSError:
            return False
    return True


class ManifestWriter:
    """Writes ``manifest.csv`` as the run goes.

    :meth:`start` replaces the file atomically with a header and the rows
    known up front (skipped files); :meth:`append` adds one finished file's
    row and fsyncs it; :meth:`finish` rewrites the whole file atomically, rows
    in input order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None
        self._writer = None

    def _write_all(self, rows) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                                 errors="backslashreplace") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(manifest_row(r) for r in rows)

    @property
    def started(self) -> bool:
        return self._fh is not None

    def start(self, rows) -> None:
        self._write_all(rows)
        self._fh = open(self.path, "a", newline="", encoding="utf-8",  # noqa: SIM115 - kept open for the run
                        errors="backslashreplace")
        self._writer = csv.DictWriter(self._fh, fieldnames=list(MANIFEST_COLUMNS), extrasaction="ignore")

    def append(self, row: dict) -> None:
        self._writer.writerow(manifest_row(row))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self, rows) -> None:
        self.close()
        self._write_all(rows)
