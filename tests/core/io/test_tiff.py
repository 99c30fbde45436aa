import os

import numpy as np
import pytest
import tifffile

from napari_seglab.core.errors import InputError
from napari_seglab.core.io import (
    atomic_path,
    ensure_not_input,
    guess_axes,
    normalize_axes,
    read_image,
    read_labels,
    safe_child,
    scan_folder,
    write_csv,
    write_tiff,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_read_2d_keeps_dtype_and_shape(tmp_path, dtype):
    data = (np.arange(64 * 48).reshape(64, 48) % 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", data)
    im = read_image(tmp_path / "a.tif")
    assert im.axes == "YX"
    assert im.data.dtype == dtype
    np.testing.assert_array_equal(im.data, data)


def test_read_stack_and_channels_normalised(tmp_path):
    stack = np.zeros((5, 32, 40), np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", stack, metadata={"axes": "ZYX"})
    assert read_image(tmp_path / "z.tif").axes == "ZYX"
    cyx = np.zeros((3, 32, 40), np.uint16)
    cyx[1] = 7
    tifffile.imwrite(tmp_path / "c.tif", cyx, metadata={"axes": "CYX"})
    im = read_image(tmp_path / "c.tif")
    assert im.axes == "YXC" and im.data.shape == (32, 40, 3)
    assert (im.data[..., 1] == 7).all()
    rgb = np.zeros((32, 40, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").axes == "YXC"


def test_normalize_drops_singletons_and_orders():
    data = np.zeros((1, 4, 2, 8, 9))
    out, axes = normalize_axes(data, "TZCYX")
    assert axes == "ZYXC" and out.shape == (4, 8, 9, 2)


def test_guess_axes():
    assert guess_axes((10, 20)) == "YX"
    assert guess_axes((5, 10, 20)) == "ZYX"
    assert guess_axes((10, 20, 3)) == "YXC"
    with pytest.raises(InputError, match="more than 5"):
        guess_axes((1,) * 6)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"this is not an image at all" * 10, "not a valid TIFF"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "not a valid TIFF"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    p = tmp_path / "bad.tif"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_image(p)


def test_truncated_tiff(tmp_path):
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (256, 256), np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt|truncated|no image|not a valid"):
        read_image(p)


def test_directory_and_missing(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.tif")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_write_refuses_input_and_escape(tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.zeros((8, 8), np.uint8))
    before = src.read_bytes()
    with pytest.raises(InputError, match="overwrite the input"):
        write_tiff(src, np.ones((8, 8), np.uint8), protect=[src])
    assert src.read_bytes() == before
    with pytest.raises(InputError, match="overwrite the input"):
        ensure_not_input(tmp_path / "." / "in.tif", [src])
    with pytest.raises(InputError, match="escape"):
        safe_child(tmp_path, "../evil.tif")
    assert safe_child(tmp_path, "sub/ok.tif") == (tmp_path / "sub" / "ok.tif").resolve()


def test_write_csv_and_tiff_roundtrip(tmp_path):
    write_csv(tmp_path / "t.csv", [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b,c", "1,2,", "3,,4"]
    lab = np.arange(12, dtype=np.uint16).reshape(3, 4)
    write_tiff(tmp_path / "l.tif", lab)
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), lab)


def test_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(InputError, match="not writable"):
        write_tiff(ro / "x.tif", np.zeros((4, 4), np.uint8))


def test_scan_folder(tmp_path):
    for name in ["b.tif", "a.tif", ".hidden.tif", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tif").write_bytes(b"x")
    assert [p.name for p in scan_folder(tmp_path)] == ["a.tif", "b.tif"]
    assert [p.name for p in scan_folder(tmp_path, recursive=True)] == ["a.tif", "b.tif", "d.tif"]
    with pytest.raises(InputError, match="no such folder"):
        scan_folder(tmp_path / "missing")


def test_full_disk_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import tifffile as tf

    def no_space(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf, "imwrite", no_space)
    with pytest.raises(InputError, match="no space left"):
        write_tiff(tmp_path / "out.tif", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_header_only_tiff(tmp_path):
    p = tmp_path / "header.tif"
    p.write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x00")
    with pytest.raises(InputError, match="no image data|not a valid TIFF|corrupt"):
        read_image(p)


def test_more_than_five_dimensions(tmp_path):
    p = tmp_path / "six.tif"
    tifffile.imwrite(p, np.zeros((2, 2, 2, 2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="5 dimensions|repeated axes"):
        read_image(p)


@pytest.mark.parametrize("dtype", [np.int32, np.float64, bool])
def test_unusual_dtypes_predict(tiny_model, blobs, dtype):
    from napari_seglab.core.events import drive
    from napari_seglab.core.predict import iter_predict_image, load_model

    img, _, mask = blobs
    data = mask if dtype is bool else img.astype(dtype)
    pred = drive(iter_predict_image(load_model(tiny_model, "cpu"), data))
    assert pred.labels.shape == img.shape


def test_unreadable_and_unwritable_even_as_root(tmp_path, monkeypatch):
    """Permission problems are reported (simulated, since CI runs as root)."""
    import napari_seglab.core.io._tiff as io_mod

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.zeros((4, 4), np.uint8))
    real_access = os.access
    monkeypatch.setattr(io_mod.os, "access", lambda p, mode: False if mode in (os.R_OK, os.W_OK) else real_access(p, mode))
    with pytest.raises(InputError, match="permission denied"):
        read_image(src)
    with pytest.raises(InputError, match="not writable"):
        write_tiff(tmp_path / "out.tif", np.zeros((4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
