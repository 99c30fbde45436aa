"""``seglab predict --3d`` / ``seglab batch --3d``: one id per nucleus through the stack, the axes said, µm³.

The network is the stand-in of tests/core/volume3d.py (its distance field follows the image's
brightness), so the 3D result has a true answer without training; the checkpoint file on the
command line is a real one, whose loading is replaced.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from volume3d import blob_model, blobs

import napari_seglab.core.predict as predict_pkg
from napari_seglab.cli import main


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(predict_pkg, "load_model", lambda *a, **k: blob_model())


def write_stack(path, *, pixel_size=True):
    image, truth = blobs()
    data = (image * 1000).astype(np.uint16)
    if pixel_size:  # ImageJ metadata: 0.5 µm pixels, 1 µm z step (anisotropy 2)
        tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                         metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    else:
        tifffile.imwrite(path, data)
    return truth


def one_id_per_nucleus(labels, truth):
    for i in range(1, int(truth.max()) + 1):
        ids, counts = np.unique(labels[truth == i], return_counts=True)
        best = ids[np.argmax(counts)]
        assert best > 0 and counts.max() > 0.9 * counts.sum()
        assert len(np.unique(np.nonzero(labels == best)[0])) >= 3  # through several planes
    assert int(labels.max()) == int(truth.max())


def test_predict_3d_reads_the_anisotropy_from_the_file_and_says_the_axes(tmp_path, random_unet, stand_in, capsys):
    truth = write_stack(tmp_path / "stack.tif")
    out = tmp_path / "labels.tif"
    code = main(["predict", "--model", str(random_unet), "--input", str(tmp_path / "stack.tif"),
                 "--output", str(out), "--3d", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "axes ZYX: Z as depth (3D objects), YX as the plane, anisotropy 2" in err
    one_id_per_nucleus(tifffile.imread(out), truth)


def test_predict_3d_without_a_z_step_warns_and_takes_the_given_one(tmp_path, random_unet, stand_in, capsys):
    truth = write_stack(tmp_path / "stack.tif", pixel_size=False)
    code = main(["predict", "--model", str(random_unet), "--input", str(tmp_path / "stack.tif"),
                 "--output", str(tmp_path / "a.tif"), "--3d", "--device", "cpu"])
    assert code == 0 and "warning: anisotropy 1" in capsys.readouterr().err
    code = main(["predict", "--model", str(random_unet), "--input", str(tmp_path / "stack.tif"),
                 "--output", str(tmp_path / "b.tif"), "--3d", "--anisotropy", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0 and "anisotropy 2" in err and "warning" not in err
    one_id_per_nucleus(tifffile.imread(tmp_path / "b.tif"), truth)


def test_predict_3d_refusals_are_exit_2_and_write_nothing(tmp_path, random_unet, stand_in, capsys):
    write_stack(tmp_path / "stack.tif")
    out = tmp_path / "labels.tif"
    base = ["predict", "--model", str(random_unet), "--input", str(tmp_path / "stack.tif"), "--output", str(out),
            "--device", "cpu", "--3d"]
    for extra, words in ((["--anisotropy", "0"], "anisotropy"), (["--3d-method", "cubes"], "3D method"),
                         (["--probabilities", str(tmp_path / "p.tif")], "cannot be combined")):
        assert main(base + extra) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()


def test_batch_3d_measures_each_nucleus_once_in_cubic_microns(tmp_path, random_unet, stand_in, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    truth = write_stack(inputs / "stack.tif")
    code = main(["batch", "--model", str(random_unet), "--input-dir", str(inputs), "--output-dir",
                 str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "--3d"])
    assert code == 0, capsys.readouterr().err
    one_id_per_nucleus(tifffile.imread(tmp_path / "out" / "stack_labels.tif"), truth)
    with open(tmp_path / "out" / "stack_objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and "z" not in rows[0]  # one row per 3D object, not per plane
    for row in rows:
        voxels = int(row["area"])
        assert float(row["volume_um3"]) == pytest.approx(voxels * 1.0 * 0.5 * 0.5)
        assert int(row["extent_z"]) >= 3 and float(row["centroid_z"]) > 0
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))[0]
    assert summary["object_count"] == "3" and float(summary["anisotropy"]) == 2.0


def test_predict_3d_block_and_halo_cut_the_volume_into_3d_blocks(tmp_path, random_unet, stand_in, capsys):
    truth = write_stack(tmp_path / "stack.tif")
    base = ["predict", "--model", str(random_unet), "--input", str(tmp_path / "stack.tif"), "--device", "cpu", "--3d"]
    assert main(base + ["--output", str(tmp_path / "whole.tif"), "--block", "0"]) == 0
    assert "3D blocks" not in capsys.readouterr().err
    code = main(base + ["--output", str(tmp_path / "blocks.tif"), "--block", "16", "--halo", "16"])
    err = capsys.readouterr().err
    assert code == 0, err
    # the 12x48x48 stack at anisotropy 2 is a 24x48x48 grid: 2 x 3 x 3 blocks of up to 16 voxels
    assert "3D blocks: 18 of up to 16 voxels a side with a 16-voxel halo (a 24x48x48 decoding grid)" in err
    whole, blocked = tifffile.imread(tmp_path / "whole.tif"), tifffile.imread(tmp_path / "blocks.tif")
    assert np.array_equal(blocked, whole)  # the stand-in sees the same values in both: the same objects and ids
    one_id_per_nucleus(blocked, truth)


@pytest.mark.parametrize(("extra", "words"), [
    (["--block", "4"], "--3d --block / --halo: 3D block side must be 0 (the whole volume at once) or at least 8"),
    (["--block", "-16"], "3D block side must be 0"),
    (["--halo", "-1"], "3D block halo must be 0 or more voxels; got -1"),
    (["--block", "16", "--3d-method", "linked"], "the linked method predicts plane by plane"),
    (["--halo", "8", "--3d-method", "linked"], "the linked method predicts plane by plane"),
    (["--block", "16", "--workers", "2"], "--3d: not available block by block yet"),
])
def test_predict_3d_bad_blocks_are_exit_2_with_one_line_and_write_nothing(tmp_path, random_unet, stand_in, capsys,
                                                                          extra, words):
    write_stack(tmp_path / "stack.tif")
    out = tmp_path / "labels.tif"
    code = main(["predict", "--model", str(random_unet), "--input", str(tmp_path / "stack.tif"), "--output", str(out),
                 "--device", "cpu", "--3d", *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_on_a_stack_learns_its_zx_zy_planes_from_the_files_z_step(tmp_path, capsys):
    src, lab, model = tmp_path / "stack.tif", tmp_path / "truth.tif", tmp_path / "m.pt"
    truth = write_stack(src)  # 1 µm z step over 0.5 µm pixels
    tifffile.imwrite(lab, truth.astype(np.uint16))
    common = ["train", "--image", str(src), "--labels", str(lab), "--label-mode", "instances", "--model-out",
              str(model), "--epochs", "1", "--steps-per-epoch", "1", "--patch", "32", "--batch-size", "2",
              "--device", "cpu", "--scale", "1", "--threads", "1"]
    assert main(common) == 0
    out = "".join(capsys.readouterr())  # notes go to stderr, the result to stdout
    assert "ZX/ZY planes:" in out and "anisotropy 2 (from the voxel size)" in out
    model.unlink()
    assert main([*common, "--anisotropy", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "anisotropy" in err[0] and not model.exists()
