"""Bookkeeping of a batch job: output names, object tables, and the run manifest.

Output names: :func:`plan_outputs` maps each input to ``<stem>_labels.tif``,
``<stem>_probabilities.tif`` and ``<stem>_objects.csv`` under the output
folder. Object tables: :func:`measure_labels` (one row per object, per time
point). The manifest: one CSV row per input, written as the run goes.

``manifest.csv`` lives in the output folder. Its columns are
:data:`MANIFEST_COLUMNS`: ``input`` (path relative to the input folder, ``/``
separators), ``status`` (``ok`` | ``failed`` | ``skipped``), ``error``,
``seconds``, ``outputs`` (``;``-separated paths relative to the output folder;
names in ``input`` and ``outputs`` are quoted by :func:`quote_name`, so any name,
with ``;``, backslashes or bytes that are not UTF-8, reads back exactly),
``input_size`` and ``input_mtime`` (to notice an input changed since),
``model`` (checkpoint name, size and mtime: a new model redoes the file), and
``started`` / ``finished`` (ISO 8601 timestamps).

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
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .io import read_image
from .paths import folder_path, safe_child

MANIFEST_NAME = "manifest.csv"
SUMMARY_NAME = "summary.csv"
MANIFEST_COLUMNS = ("input", "status", "error", "seconds", "outputs", "input_size", "input_mtime", "model",
                    "started", "finished")
STATUSES = ("ok", "failed", "skipped")
SUMMARY_COLUMNS = ("input", "object_count", "total_area", "mean_area", "median_area", "min_area", "max_area")


# ----------------------------------------------------------------------------- outputs


def _stem(rel: Path) -> Path:
    name = rel.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return rel.with_name(name[: -len(suffix)])
    return rel.with_suffix("")


def plan_outputs(input_dir: Path, output_dir: Path, files: Sequence[Path], *, probabilities: bool,
                 measurements: bool) -> list[tuple[Path, str, dict[str, Path]]]:
    """(input path, relative input name, {kind: output path}) for every input file.

    Outputs mirror the input's sub-folder under ``output_dir``; inputs whose
    names differ only by extension or case get the full name in their stem
    so no two inputs share an output. An output that would land on any
    input file is refused.
    """
    inputs = {p.resolve() for p in files}
    taken: set[str] = set()
    plan = []
    for path in files:
        rel = path.relative_to(input_dir)
        stem = _stem(rel)
        if stem.as_posix().lower() in taken:
            stem = rel.with_name(rel.name.replace(".", "_"))
        n = 1
        while stem.as_posix().lower() in taken:
            n += 1
            stem = rel.with_name(f"{rel.name.replace('.', '_')}_{n}")
        taken.add(stem.as_posix().lower())
        outs = {"labels": safe_child(output_dir, f"{stem.as_posix()}_labels.tif")}
        if probabilities:
            outs["probabilities"] = safe_child(output_dir, f"{stem.as_posix()}_probabilities.tif")
        if measurements:
            outs["objects"] = safe_child(output_dir, f"{stem.as_posix()}_objects.csv")
        for out in outs.values():
            if out in inputs or out.resolve() in inputs:
                raise InputError(f"{out}: an output would overwrite an input file; choose another output folder")
        plan.append((path, rel.as_posix(), outs))
    return plan


def summary_of_outputs(outs: dict[str, Path]) -> dict:
    """Image summary of a file done in an earlier run, from its objects CSV or labels TIFF."""
    from .instances import summarize_objects

    if "objects" in outs:
        with open(outs["objects"], newline="", encoding="utf-8") as fh:
            rows = []
            for r in csv.DictReader(fh):
                row = {"area": float(r["area"])}
                for key, value in r.items():
                    if key.startswith("mean_intensity"):
                        row[key] = float(value) if value not in ("", None) else float("nan")
                rows.append(row)
        return summarize_objects(rows)
    labels = read_image(outs["labels"])
    return summarize_objects(per_plane(area_rows, labels.data, None, labels.axes))


def check_folders(input_dir, output_dir) -> tuple[Path, Path]:
    """(input folder, output folder) resolved once (:func:`.paths.folder_path`); every later path derives from them.

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


def per_plane(fn, labels: np.ndarray, image: np.ndarray | None, axes: str) -> list[dict]:
    """Apply ``fn(labels_plane, image_plane)`` per (Y, X) plane, adding ``t`` / ``z`` columns.

    ``axes``: canonical axes of ``image`` (or of ``labels`` when ``image`` is
    None); the leading T and Z axes index the planes. Predictions label each
    plane on its own, so objects are measured (and counted) per plane.
    """
    lead = [a for a in axes if a in "TZ"]
    if not lead:
        return fn(labels, image)
    rows = []
    for index in np.ndindex(*labels.shape[: len(lead)]):
        where = {a.lower(): int(i) for a, i in zip(lead, index, strict=True)}
        rows.extend({**where, **r} for r in fn(labels[index], None if image is None else image[index]))
    return rows


def measure_labels(labels: np.ndarray, image: np.ndarray, axes: str) -> list[dict]:
    """Object measurements of a predicted label image, one table over all planes.

    ``image``: canonical axes ``axes`` (a subset of TZYXC); ``labels``: the
    same shape without C, int. Rows as :func:`.instances.measure_objects`
    gives them for 2D objects, with ``t`` / ``z`` first for stacks.
    """
    from .instances import measure_objects

    return per_plane(measure_objects, labels, image, axes)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as uint16 when they fit, else uint32 (values are never negative)."""
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


def area_rows(labels: np.ndarray, _image=None) -> list[dict]:
    """``label`` and ``area`` of every object: the cheap table when measurements are off."""
    counts = np.bincount(labels.ravel().astype(np.int64))
    return [{"label": int(i), "area": int(counts[i])} for i in np.flatnonzero(counts[1:]) + 1]


def object_columns(image: np.ndarray, axes: str) -> list[str]:
    """CSV header of :func:`measure_labels` for this image, from a tiny dummy object."""
    from .instances import measure_objects

    lab = np.zeros((5, 5), np.int32)
    lab[1:4, 1:4] = 1
    channels = (image.shape[-1],) if "C" in axes else ()
    keys = list(measure_objects(lab, np.zeros(lab.shape + channels, np.float32))[0])
    return [a.lower() for a in axes if a in "TZ"] + keys


# ----------------------------------------------------------------------------- manifest


def now_iso() -> str:
    """The local time as an ISO 8601 string with seconds and UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def input_stamp(path: str | os.PathLike) -> tuple[str, str]:
    """(size in bytes, mtime in ns) of an input file as strings, for the manifest."""
    st = Path(path).stat()
    return str(st.st_size), str(st.st_mtime_ns)


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
             finished: str | None = None) -> dict:
    """A manifest row for one input (``outputs``: the kinds written, absolute paths)."""
    now = now_iso()
    return {"input": rel, "status": status, "error": error, "seconds": seconds,
            "outputs": {k: p.relative_to(output_dir).as_posix() for k, p in outputs.items()},
            "input_size": stamp[0], "input_mtime": stamp[1], "model": model,
            "started": started or now, "finished": finished or now}


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
                model: str) -> bool:
    """True when ``row`` proves the file was done with these outputs and is still done.

    ``outputs``: the planned output paths of this run (kind -> absolute path);
    ``stamp``: :func:`input_stamp` of the input now; ``model``:
    :func:`model_stamp` of this run's checkpoint. The row must say ``ok`` (or
    ``skipped``, an earlier resume of an ok file) for the same model, list
    exactly these outputs, every output must exist and be non-empty, and the
    input must not have changed size or modification time since.
    """
    if row is None or row.get("status") not in ("ok", "skipped") or row.get("model") != model:
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
