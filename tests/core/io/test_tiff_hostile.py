"""Hostile files and names at the core level: TIFF headers (hypothesis), atomic writes, names, patterns.

Every bad file must end in an InputError naming the file (never another
exception type, never an allocation the file merely asks for), and every
name a file system can hold must survive the manifest.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_seglab.core.io._tiff as io_mod
from napari_seglab.core.batch import (
    ManifestWriter,
    join_outputs,
    quote_name,
    read_manifest,
    split_outputs,
    unquote_name,
)
from napari_seglab.core.data import normalize, percentiles
from napari_seglab.core.errors import InputError
from napari_seglab.core.io import (
    atomic_path,
    check_output_path,
    check_pattern,
    check_regular_file,
    file_axes,
    probe_tiff,
    read_image,
    read_labels,
    restore_singletons,
    write_tiff,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _tiff_bytes(**kwargs) -> bytes:
    buf = io.BytesIO()
    data = kwargs.pop("data", np.arange(48 * 40, dtype=np.uint16).reshape(48, 40))
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


SEEDS = {
    "plain": _tiff_bytes(),
    "zlib": _tiff_bytes(compression="zlib"),
    "lzw": _tiff_bytes(compression="lzw"),
    "tiled": _tiff_bytes(tile=(16, 16), compression="zlib"),
    "bigtiff": _tiff_bytes(bigtiff=True),
    "stack": _tiff_bytes(data=np.zeros((3, 24, 20), np.uint8), metadata={"axes": "ZYX"}),
    "rgb": _tiff_bytes(data=np.zeros((24, 20, 3), np.uint8), photometric="rgb"),
}


@pytest.fixture
def small_memory(monkeypatch):
    """Pretend 64 MiB are free: whatever a fuzzed header declares, reading stays within that."""
    monkeypatch.setattr(io_mod, "memory_headroom", lambda: 64 * 2**20)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), edits=st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=12))
def test_fuzzed_tiff_headers_read_or_give_an_input_error(tmp_path, small_memory, seed, edits):
    data = bytearray(SEEDS[seed])
    for where, value in edits:
        if where < len(data):
            data[where] = value
    path = tmp_path / "fuzz.tif"
    path.write_bytes(bytes(data))
    try:
        image = read_image(path)
    except InputError as exc:
        assert str(path) in str(exc)
    else:
        assert image.data.nbytes <= 64 * 2**20
        assert set(image.axes) >= {"Y", "X"}


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), cut=st.integers(0, 2000))
def test_truncated_tiffs_give_an_input_error_and_no_log_noise(tmp_path, caplog, seed, cut):
    """The CLI promises one error line: tifffile's own warnings must not reach stderr."""
    caplog.clear()
    path = tmp_path / "cut.tif"
    path.write_bytes(SEEDS[seed][:cut])
    with contextlib.suppress(InputError):
        read_image(path)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def _header(width: int, height: int, bits: int, samples: int, compression: int) -> bytes:
    """A one-strip TIFF header declaring this image over 64 bytes of data."""
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
            (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, 64)]
    out = bytearray(b"II*\0" + struct.pack("<I", 8 + 64)) + bytes(64)
    out += struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return bytes(out + struct.pack("<I", 0))


@FUZZ
@given(width=st.integers(1, 2**32 - 1), height=st.integers(1, 2**32 - 1), bits=st.sampled_from([1, 8, 16, 32, 64]),
       samples=st.integers(1, 4), compression=st.sampled_from([1, 5, 8, 32946]))
def test_declared_sizes_beyond_memory_are_refused_before_decoding(tmp_path, small_memory, width, height, bits,
                                                                  samples, compression):
    path = tmp_path / "declared.tif"
    path.write_bytes(_header(width, height, bits, samples, compression))
    try:
        image = read_image(path)
    except InputError as exc:
        huge = width * height * samples * max(1, bits // 8) > 64 * 2**20
        assert not huge or "declares" in str(exc) or "not a valid TIFF" in str(exc) or "corrupt" in str(exc)
    else:
        assert image.data.size * (image.data.itemsize + 8) <= 64 * 2**20


def test_probe_refuses_without_decoding(tmp_path, small_memory):
    path = tmp_path / "big.tif"
    path.write_bytes(_header(20_000, 20_000, 8, 1, 8))
    with pytest.raises(InputError, match="declares a 20000x20000 uint8"):
        probe_tiff(path)


def test_memory_headroom_follows_an_address_space_limit():
    """Under RLIMIT_AS the headroom is what the limit leaves, however much RAM is free."""
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31))\n"
            "from napari_seglab.core.io import memory_headroom; print(memory_headroom())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert 0 < int(proc.stdout) < 2**31


@pytest.mark.parametrize("make,kind", [
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: p.symlink_to("/dev/null"), "character device"),
])
def test_special_files_are_named_not_opened(tmp_path, make, kind):
    path = tmp_path / "special.tif"
    make(path)
    with pytest.raises(InputError, match=kind):
        read_image(path)
    with pytest.raises(InputError, match=kind):
        check_regular_file(path)


def test_device_as_output_is_refused(tmp_path):
    with pytest.raises(InputError, match="character device"):
        check_output_path("/dev/null", "--output")


# ----------------------------------------------------------------------------- atomic writes


def test_a_failed_replace_names_the_users_file_not_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src), str(dst))

    monkeypatch.setattr(io_mod.os, "replace", refuse)
    with pytest.raises(InputError) as info:
        write_tiff(target, np.zeros((4, 4), np.uint8))
    assert str(target) in str(info.value) and ".tmp-" not in str(info.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]


@pytest.mark.parametrize("name", ["x" * 251 + ".tif", "é" * 125 + ".tif", "a" * 255])
def test_temporary_names_fit_the_name_limit(tmp_path, name):
    target = tmp_path / name
    assert len(os.fsencode(target.name)) <= 255
    write_tiff(target, np.zeros((4, 4), np.uint8))
    assert target.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_name_over_the_limit_is_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="file name too long"), atomic_path(tmp_path / ("x" * 256)) as tmp:
        tmp.write_bytes(b"never")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- names, patterns, axes

NAMES = st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b
                                                  and b not in (b".", b".."))


@settings(max_examples=300, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=4))
def test_quoted_names_read_back_exactly(names):
    decoded = [os.fsdecode(n) for n in names]
    for name in decoded:
        quoted = quote_name(name)
        assert unquote_name(quoted) == name
        quoted.encode("utf-8")  # always valid text
        assert "\n" not in quoted and ";" not in quoted.replace("\\;", "")
    assert split_outputs(join_outputs(dict(enumerate(decoded)))) == decoded


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAMES, min_size=1, max_size=3, unique=True))
def test_manifest_file_round_trip_with_hostile_names(tmp_path, names):
    rels = [os.fsdecode(n) for n in names]
    rows = [{"input": rel, "status": "ok", "error": f"bad {rel}", "seconds": 1.0,
             "outputs": {"labels": rel + "_labels.tif", "objects": rel + ";x.csv"},
             "input_size": "1", "input_mtime": "2", "model": "m", "started": "2026-01-01T00:00:00+00:00",
             "finished": "2026-01-01T00:00:01+00:00"} for rel in rels]
    path = tmp_path / "manifest.csv"
    writer = ManifestWriter(path)
    writer.start(rows[:1])
    for row in rows[1:]:
        writer.append(row)
    writer.close()
    back = read_manifest(path)
    assert sorted(back) == sorted(set(rels))
    for rel in rels:
        assert split_outputs(back[rel]["outputs"]) == [rel + "_labels.tif", rel + ";x.csv"]
    path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("pattern", ["", "   ", "/abs/*.tif", "../*.tif", "a/../../b*.tif", "x\0y"])
def test_bad_patterns(pattern):
    with pytest.raises(InputError, match="pattern"):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern", ["*.tif", "sub/*.tif", "**/*.tif", "[ab]*.tif", "a..b.tif"])
def test_good_patterns(pattern):
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize("shape,axes,expected", [
    ((1, 64, 64), "ZYX", "ZYX"),
    ((1, 1, 64, 64), "TZYX", "TZYX"),
    ((3, 64, 64), "CYX", "YXC"),
    ((1, 64, 64, 3), "ZYXS", "ZYXC"),
    ((1, 1, 64, 64), "CSYX", "YXC"),  # two channel-like singletons: one C
    ((64, 64), "YX", "YX"),
])
def test_file_axes_keep_singletons(shape, axes, expected):
    assert file_axes(shape, axes) == expected


def test_restore_singletons():
    labels = np.zeros((8, 9), np.uint16)
    out, axes = restore_singletons(labels, "YX", "TZYXC")
    assert out.shape == (1, 1, 8, 9) and axes == "TZYX"
    same, axes = restore_singletons(labels, "YX", None)
    assert same.shape == (8, 9) and axes == "YX"
    stack = np.zeros((4, 8, 9), np.uint16)
    out, axes = restore_singletons(stack, "ZYX", "TZYX")
    assert out.shape == (1, 4, 8, 9) and axes == "TZYX"


def test_single_plane_stack_reads_with_its_file_axes(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((1, 16, 16), np.uint8), metadata={"axes": "ZYX"})
    image = read_image(tmp_path / "s.tif")
    assert image.axes == "YX" and image.file_axes == "ZYX"


# ----------------------------------------------------------------------------- normalisation at any range


@settings(max_examples=200, deadline=None)
@given(exponent=st.integers(-300, 300), offset=st.floats(-0.5, 0.5), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_normalisation_is_the_same_at_any_unit(exponent, offset, seed, dtype):
    rng = np.random.default_rng(seed)
    base = rng.random((1, 32, 32)) + offset
    scale = 10.0 ** exponent
    scaled = (base * scale).astype(dtype)
    if dtype == np.float32 and not np.all(np.isfinite(scaled)) or not np.any(scaled):
        return  # not representable in this dtype: nothing to compare
    if dtype == np.float32 and np.abs(scaled[scaled != 0]).min() < np.finfo(np.float32).tiny:
        return  # subnormal float32 keeps a few bits: the input itself is already quantised
    if np.ptp(scaled) == 0:
        return  # every value collapsed to one in this dtype
    lo, hi = percentiles(scaled)
    out = normalize(scaled, lo, hi)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    ref_lo, ref_hi = percentiles(base)
    reference = normalize(base, ref_lo, ref_hi)
    tolerance = 1e-3 if dtype == np.float64 or abs(exponent) < 30 else 0.05
    assert np.abs(out - reference).max() < tolerance


def test_extreme_float64_outliers_stay_finite():
    x = np.zeros((1, 16, 16))
    x[0, 0, 0] = 1.7e308
    x[0, 1:, :] = np.linspace(0, 1, 15 * 16).reshape(15, 16)
    out = normalize(x, *percentiles(x))
    assert np.all(np.isfinite(out))


def test_a_file_without_y_and_x_axes_is_named_in_the_refusal(tmp_path):
    """Found by the header fuzzer: a file whose axes have no Y and X said so without naming the file."""
    path = tmp_path / "zx.tif"
    tifffile.imwrite(path, np.zeros((4, 8), np.uint8), metadata={"axes": "ZX"})
    for read in (read_image, read_labels):
        with pytest.raises(InputError, match="no Y and X axes") as info:
            read(path)
        assert str(path) in str(info.value)
