"""``seglab predict`` block by block: OME-Zarr and TIFF in and out, the whole image's labels, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_seglab.cli import main
from napari_seglab.core.io import OmeZarrWriter, open_lazy
from napari_seglab.core.synthetic import make_nuclei


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    img, _ = make_nuclei((300, 420), seed=3)
    path = tmp_path_factory.mktemp("blocks") / "img.tif"
    tifffile.imwrite(path, img, tile=(128, 128))
    return path, img


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a one-to-one map of ids turns ``a`` into ``b`` (0 stays 0)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def predict(model, src, out, *extra):
    return main(["predict", "--model", str(model), "--input", str(src), "--output", str(out), "--tile", "64",
                 "--device", "cpu", "--runtime", "torch", *extra])


def test_blocked_outputs_equal_the_whole_image_in_tiff_and_ome_zarr(random_unet, image, tmp_path, capsys):
    src, img = image
    assert predict(random_unet, src, tmp_path / "whole.tif", "--block", "0") == 0
    whole = tifffile.imread(tmp_path / "whole.tif")
    assert predict(random_unet, src, tmp_path / "blocks.tif", "--block", "256") == 0
    err = capsys.readouterr().err
    assert "in 256px blocks" in err and "predicted block 4/4" in err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "blocks.tif"), whole)
    out = tmp_path / "labels.ome.zarr"
    assert predict(random_unet, src, out, "--block", "256", "--probabilities", str(tmp_path / "p.ome.zarr")) == 0
    np.testing.assert_array_equal(open_lazy(out).load(), whole)
    assert open_lazy(tmp_path / "p.ome.zarr").shape == (300, 420, 2)
    # an OME-Zarr input, blocks by default
    zin = tmp_path / "img.ome.zarr"
    with OmeZarrWriter(zin, img.shape, img.dtype, chunk=128, name="image") as w:
        w.array[...] = img
        w.finish()
    assert predict(random_unet, zin, tmp_path / "from_zarr.tif", "--block", "256") == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "from_zarr.tif"), whole)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch store left


@pytest.mark.parametrize(("extra", "reason"), [
    (["--block", "100"], "at least 256"),
    (["--halo", "-1"], "--halo"),
    (["--boxes", "b.csv"], "--boxes: not available block by block"),
])
def test_bad_block_options_are_refused_before_any_write(random_unet, image, tmp_path, capsys, extra, reason):
    src, _ = image
    extra = [str(tmp_path / e) if e.endswith(".csv") else e for e in extra]
    assert predict(random_unet, src, tmp_path / "out.ome.zarr", *extra) == 2
    assert reason in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_zarr_output_over_the_zarr_input_is_refused(random_unet, tmp_path, capsys):
    zin = tmp_path / "img.ome.zarr"
    with OmeZarrWriter(zin, (64, 64), np.uint16, chunk=64) as w:
        w.finish()
    assert predict(random_unet, zin, zin) == 2
    assert "overwrite the input" in capsys.readouterr().err


def test_two_local_dask_workers_give_the_same_labels(random_unet, image, tmp_path, capsys):
    src, _ = image
    assert predict(random_unet, src, tmp_path / "one.ome.zarr", "--block", "256") == 0
    assert predict(random_unet, src, tmp_path / "two.ome.zarr", "--block", "256", "--workers", "2") == 0
    assert "block tasks on a local Dask cluster of 2 worker processes" in capsys.readouterr().err
    np.testing.assert_array_equal(open_lazy(tmp_path / "two.ome.zarr").load(), open_lazy(tmp_path / "one.ome.zarr").load())


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stop_between_blocks_leaves_no_output_and_no_hidden_store(random_unet, image, tmp_path, signum, code):
    import os
    import signal
    import subprocess
    import sys

    # 12 blocks: after the first, seconds of work remain, so a loaded machine's late signal still finds it busy
    src = tmp_path.parent / f"{tmp_path.name}-in.tif"
    tifffile.imwrite(src, np.tile(image[1], (3, 3))[:768, :1024], tile=(128, 128))
    out = tmp_path / "labels.ome.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "napari_seglab.cli", "predict", "--model", str(random_unet),
                             "--input", str(src), "--output", str(out), "--block", "256", "--tile", "64",
                             "--device", "cpu", "--runtime", "torch"], stderr=subprocess.PIPE, text=True, env=env,
                            # a job started in the background (nohup ... &) inherits SIGINT ignored: as at a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:  # wait for the first block, then interrupt
        if "predicted block 1/" in line:
            proc.send_signal(signal.Signals(signum))
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == code
    assert "no partial files were written" in rest
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def half_micron_flows(tmp_path_factory):
    """A random-weight flows U-Net recorded as trained at 0.5 µm per pixel, object scale 1.5."""
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(1)
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2,
                     options={"head": "flows"})
    meta = {"model": spec.to_dict(), "label_mode": "instances", "normalization": Normalization().to_dict(),
            "scale": 1.5, "pixel_size": [0.5, 0.5]}
    return save_checkpoint(tmp_path_factory.mktemp("half_micron") / "m.pt", build_model(spec)[0], meta)


def test_a_pixel_size_and_an_object_scale_go_block_by_block(half_micron_flows, image, tmp_path, capsys):
    """--pixel-size 0.25 with a model of 0.5 µm at object scale 1.5: resampled by 0.75, in blocks as whole."""
    src, _ = image
    size = ["--pixel-size", "0.25"]
    assert predict(half_micron_flows, src, tmp_path / "whole.tif", "--block", "0", *size) == 0
    whole = tifffile.imread(tmp_path / "whole.tif")
    capsys.readouterr()
    out = tmp_path / "labels.ome.zarr"
    assert predict(half_micron_flows, src, out, "--block", "256", "--halo", "32", *size) == 0
    err = capsys.readouterr().err
    assert "resampling the image by 0.75" in err and "300x420 -> 225x315 pixels, block by block" in err
    blocked = open_lazy(out)
    assert blocked.pixel_size == pytest.approx((0.25, 0.25))
    labels = blocked.load()
    assert whole.max() > 0
    assert same_up_to_renumbering(labels, whole)


def test_a_resampling_factor_out_of_range_writes_nothing(half_micron_flows, image, tmp_path, capsys):
    src, _ = image
    assert predict(half_micron_flows, src, tmp_path / "out.ome.zarr", "--pixel-size", "50") == 2
    assert "outside" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_large_tiff_with_a_pixel_size_goes_block_by_block_by_itself(half_micron_flows, image, tmp_path, capsys,
                                                                       monkeypatch):
    from napari_seglab.cli import predict_blocks

    monkeypatch.setattr(predict_blocks, "AUTO_BLOCK_PIXELS", 256 * 256)  # "above 4096x4096" at test size
    src, _ = image
    assert predict(half_micron_flows, src, tmp_path / "auto.tif", "--pixel-size", "0.25") == 0
    err = capsys.readouterr().err
    assert "in 1024px blocks" in err and "resampling the image by 0.75" in err
    assert tifffile.imread(tmp_path / "auto.tif").shape == (300, 420)


def test_batch_block_options(random_unet, image, tmp_path, capsys):
    """``seglab batch --block``: refused (exit 2, nothing written) for a model or a choice it cannot honour;
    an OME-Zarr in the folder with --block 0 is refused too."""
    src, img = image
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "img.tif").write_bytes(src.read_bytes())

    def batch(*extra):
        return main(["batch", "--model", str(random_unet), "--input-dir", str(folder), "--output-dir",
                     str(tmp_path / "out"), "--workers", "0", "--pattern", "*.tif;*.zarr", *extra])

    assert batch("--block", "256") == 2
    assert "binary semantic model" in capsys.readouterr().err
    assert batch("--block", "16") == 2
    assert "block side must be 0" in capsys.readouterr().err
    with OmeZarrWriter(folder / "other.ome.zarr", img.shape, img.dtype, chunk=128, name="image") as w:
        w.array[...] = img
        w.finish()
    assert batch("--block", "0") == 2
    assert "read block by block only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # automatic: the TIFF whole, the OME-Zarr block by block, which this binary model cannot: it fails, saying why
    assert batch() == 3  # some files failed
    assert (tmp_path / "out" / "img_labels.tif").is_file() and not (tmp_path / "out" / "other_labels.ome.zarr").exists()
    assert "binary semantic model" in capsys.readouterr().err
