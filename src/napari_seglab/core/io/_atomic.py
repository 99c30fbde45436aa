"""Atomic files: a write either completes or leaves the previous file (or nothing) in place.

:func:`atomic_path` hands out a hidden temporary name beside the final one and
replaces the final file with ``os.replace`` only once the content is complete
and fsync'ed; :func:`write_tiff` and :func:`write_csv` write through it and
never over a file they are told to protect (an input).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import stat
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._paths import ensure_not_input, file_kind


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _tmp_name(final: Path, name_max: int) -> str:
    """A hidden temporary name beside ``final`` that fits the file system's name limit."""
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    suffix = final.suffix if len(final.suffix) <= 16 else ""
    room = name_max - len(os.fsencode("." + tag + suffix))
    stem = os.fsencode(final.name)[: max(0, room)].decode("utf-8", "ignore")  # never split a character
    return f".{stem}{tag}{suffix}"


def _replace_error(final: Path, exc: OSError) -> InputError:
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EPERM, errno.EACCES):
        why += " (is it read-only, immutable or owned by someone else?)"
    return InputError(f"{final}: cannot write this file: {why}; nothing was written")


def check_output_path(final: str | os.PathLike, flag: str = "") -> Path:
    """Refuse an output path that cannot be written, before any work and without writing it.

    Checks: the folder exists and accepts a new file (probed for real with a
    hidden file, removed at once), the name fits the file system, and an
    existing file there is a regular file that may be replaced.
    """
    final = Path(final)
    where = f"{flag} {final}" if flag else str(final)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{where}: folder {parent} does not exist")
    if len(os.fsencode(final.name)) > _name_max(parent):
        raise InputError(f"{where}: file name too long ({len(os.fsencode(final.name))} bytes; this file "
                         f"system allows {_name_max(parent)})")
    if final.is_dir():
        raise InputError(f"{where}: is a folder, expected a file name")
    try:
        st = final.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"{where}: {exc.strerror or exc}") from exc
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise InputError(f"{where}: exists and is {file_kind(st.st_mode)}; choose a file name")
    if st is not None and stat.S_ISREG(st.st_mode) and _immutable(final):
        raise InputError(f"{where}: the existing file is immutable or append-only and cannot be replaced")
    probe = parent / _tmp_name(final, _name_max(parent))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"{where}: cannot write in folder {parent}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return final


def _immutable(path: Path) -> bool:
    """True when the file carries the Linux immutable or append-only attribute."""
    try:
        import fcntl
        import struct

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (ImportError, OSError):
        return False
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, 0x80086601, struct.pack("l", 0)))[0]  # FS_IOC_GETFLAGS
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(flags & (0x10 | 0x20))  # FS_IMMUTABLE_FL | FS_APPEND_FL


#: errno values of a full disk (or a full quota)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException | None) -> bool:
    """True when ``error``, or an error it was raised from, is a full disk or quota (ENOSPC, EDQUOT)."""
    for _ in range(8):
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final`` atomically.

    On any exception (or a cancelled generator) the temporary file is removed
    and ``final`` keeps its previous content. A process killed mid-write leaves
    only a hidden ``.name.tmp-*`` file, never a partial file under ``final``.
    The temporary name is shortened to fit the file system's name limit;
    errors name ``final``, never the temporary.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent}: output folder is not writable")
    name_max = _name_max(parent)
    if len(os.fsencode(final.name)) > name_max:
        raise InputError(f"{final}: file name too long ({len(os.fsencode(final.name))} bytes; this file "
                         f"system allows {name_max}); nothing was written")
    tmp = parent / _tmp_name(final, name_max)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            raise _replace_error(final, exc) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"{final}: no space left on the device; nothing was written") from exc
        if exc.errno in (errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG) or (
                exc.filename is not None and tmp.name in str(exc.filename)):
            raise InputError(f"{final}: {exc.strerror or exc}; nothing was written") from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_tiff(path: str | os.PathLike, data: np.ndarray, *, axes: str | None = None,
               compression: str | None = "zlib", protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` atomically as a TIFF (never over a file in ``protect``)."""
    import tifffile

    path = Path(path)
    ensure_not_input(path, protect)
    metadata = {"axes": axes} if axes else None
    with atomic_path(path) as tmp:
        try:
            tifffile.imwrite(tmp, data, compression=compression, metadata=metadata,
                             photometric="minisblack")
        except OSError:
            raise
    return path


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None,
              protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write dict rows to a CSV atomically; columns default to the union in first-seen order."""
    path = Path(path)
    ensure_not_input(path, protect)
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
