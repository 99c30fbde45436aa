"""The run manifest of a batch job: one CSV row per input, written as the run goes.

``manifest.csv`` lives in the output folder. Its columns are
:data:`MANIFEST_COLUMNS`: ``input`` (path relative to the input folder, ``/``
separators), ``status`` (``ok`` | ``failed`` | ``skipped``), ``error``,
``seconds``, ``outputs`` (``;``-separated paths relative to the output folder),
``input_size`` and ``input_mtime`` (to notice an input changed since), and
``started`` / ``finished`` (ISO 8601 timestamps).

The manifest never claims more than is on disk: a row is appended (and
fsync'ed) only after every output of its file was written atomically, and the
whole file is rewritten atomically at the start and at the end of a run. A run
killed mid-append leaves at worst a broken last line, which
:func:`read_manifest` ignores, so the file is simply redone on resume.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime
from pathlib import Path

from .io import atomic_path

MANIFEST_NAME = "manifest.csv"
SUMMARY_NAME = "summary.csv"
MANIFEST_COLUMNS = ("input", "status", "error", "seconds", "outputs", "input_size", "input_mtime",
                    "started", "finished")
STATUSES = ("ok", "failed", "skipped")


def now_iso() -> str:
    """The local time as an ISO 8601 string with seconds and UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def input_stamp(path: str | os.PathLike) -> tuple[str, str]:
    """(size in bytes, mtime in ns) of an input file as strings, for the manifest."""
    st = Path(path).stat()
    return str(st.st_size), str(st.st_mtime_ns)


def join_outputs(outputs: dict[str, str]) -> str:
    """Output paths (relative to the output folder) as one ``;``-separated manifest field."""
    return ";".join(outputs.values())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def manifest_row(row: dict) -> dict:
    """A row restricted to :data:`MANIFEST_COLUMNS`, with one-line text fields."""
    out = {key: row.get(key, "") for key in MANIFEST_COLUMNS}
    out["error"] = _one_line(out["error"] or "")
    if isinstance(out["outputs"], dict):
        out["outputs"] = join_outputs(out["outputs"])
    if isinstance(out["seconds"], float):
        out["seconds"] = f"{out['seconds']:.3f}"
    return out


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
            if header is None or tuple(header) != MANIFEST_COLUMNS:
                return {}
            for fields in reader:
                if len(fields) != len(MANIFEST_COLUMNS):
                    continue
                row = dict(zip(MANIFEST_COLUMNS, fields, strict=True))
                if row["status"] not in STATUSES or not row["input"]:
                    continue
                try:
                    datetime.fromisoformat(row["finished"])
                except ValueError:
                    continue
                rows[row["input"]] = row
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return rows


def is_complete(row: dict | None, outputs: dict[str, Path], output_dir: Path, stamp: tuple[str, str]) -> bool:
    """True when ``row`` proves the file was done with these outputs and is still done.

    ``outputs``: the planned output paths of this run (kind -> absolute path);
    ``stamp``: :func:`input_stamp` of the input now. The row must say ``ok``
    (or ``skipped``, an earlier resume of an ok file), list exactly these
    outputs, every output must exist and be non-empty, and the input must not
    have changed size or modification time since.
    """
    if row is None or row.get("status") not in ("ok", "skipped"):
        return False
    planned = [p.relative_to(output_dir).as_posix() for p in outputs.values()]
    listed = [p for p in row.get("outputs", "").split(";") if p]
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
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(manifest_row(r) for r in rows)

    def start(self, rows) -> None:
        self._write_all(rows)
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - kept open for the run
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
