"""File-system paths, normalised once at the edge: resolved folders, safe output names, folder scans.

Every path a job carries after its entry point is an absolute :class:`~pathlib.Path`
whose folders are resolved (symlinks followed): an output folder reached
through a link (macOS ``/tmp``, cluster scratch mounts) then compares equal
to the same folder named directly, and ``relative_to`` between a folder and
the names planned inside it never fails. File names themselves are not
resolved: a link in the input folder keeps its own name.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError


def resolved(path: str | os.PathLike) -> Path:
    """``path`` as an absolute Path with every symlink resolved (it need not exist)."""
    return Path(path).resolve()


def folder_path(path: str | os.PathLike) -> Path:
    """A folder as the one form the core carries: absolute, symlinks resolved."""
    return resolved(path)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``"a FIFO (named pipe)"``...)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str | os.PathLike, what: str = "a TIFF file", *, allow_empty: bool = False
                       ) -> os.stat_result:
    """Stat of an existing, readable, non-empty (or, with ``allow_empty``, empty) regular file; anything else is
    an InputError.

    A FIFO, socket or device is refused before it is opened (reading a FIFO
    would block, a device may never end).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, expected {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is {file_kind(st.st_mode)}, expected {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied (file is not readable)")
    if st.st_size == 0 and not allow_empty:
        raise InputError(f"{path}: file is empty (0 bytes)")
    return st


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (existing or not)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def ensure_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output path that names one of the input files."""
    for inp in inputs:
        if inp is not None and same_file(output, inp):
            raise InputError(f"{output}: output would overwrite the input file; choose another name")


def safe_child(folder: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``folder / relative`` under the resolved ``folder``, refusing names that would escape it.

    ``..``, absolute names and sub-folders that are links leading elsewhere
    are refused. The returned path is the resolved folder joined with the
    name as given (its last part is not resolved), so
    ``safe_child(f, r).relative_to(folder_path(f))`` is always ``r``.
    """
    folder = folder_path(folder)
    rel = Path(relative)
    if rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise InputError(f"{relative}: output name would escape the output folder {folder}")
    candidate = folder / rel
    real = candidate.parent.resolve()
    if real != folder and folder not in real.parents:
        raise InputError(f"{relative}: output name would escape the output folder {folder}")
    return candidate


def scan_folder(folder: str | os.PathLike, pattern: str = "*.tif", recursive: bool = False) -> list[Path]:
    """Files in ``folder`` matching the glob ``pattern`` (sorted; hidden files skipped).

    The paths found lie under ``folder`` as given (pass a :func:`folder_path`).
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a folder")
    check_pattern(pattern)
    try:
        found = list(folder.rglob(pattern) if recursive else folder.glob(pattern))
    except (ValueError, NotImplementedError, OSError) as exc:
        raise InputError(f"file name pattern {pattern!r} cannot be used ({exc})") from exc
    return sorted(p for p in found if not p.name.startswith(".") and _is_regular(p))


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def check_pattern(pattern) -> str:
    """Refuse a glob pattern that is empty, absolute or climbs out of the input folder."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise InputError("the file name pattern is empty; give one such as '*.tif'")
    if "\0" in pattern:
        raise InputError("the file name pattern holds a NUL character")
    if os.path.isabs(pattern) or pattern.startswith(("/", "\\")) or Path(pattern).drive:
        raise InputError(f"file name pattern {pattern!r} is an absolute path; give a pattern relative to the "
                         "input folder, such as '*.tif', and the folder with --input-dir")
    if ".." in Path(pattern).parts:
        raise InputError(f"file name pattern {pattern!r} climbs out of the input folder ('..'); point "
                         "--input-dir at the folder instead")
    return pattern
