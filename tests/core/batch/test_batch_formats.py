"""A batch over a folder that mixes TIFF, OME-TIFF, LIF and CZI files: each read, measured in µm where it says
its pixel size, and the reading choice recorded in the manifest."""

from __future__ import annotations

import csv

import numpy as np
import tifffile
from microscope_files import write_czi, write_lif

from napari_seglab.cli import main
from napari_seglab.core.batch import iter_run_batch, read_manifest
from napari_seglab.core.events import FileDone, collect
from napari_seglab.core.synthetic import make_nuclei


def _folder(folder):
    folder.mkdir()
    image, _ = make_nuclei((64, 80), seed=3)
    tifffile.imwrite(folder / "plain.tif", image)
    tifffile.imwrite(folder / "calibrated.ome.tif", image, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    write_lif(folder / "leica.lif", [("first", image, "YX", {"X": 0.5, "Y": 0.5}),
                                     ("second", image[::-1].copy(), "YX", {"X": 0.5, "Y": 0.5})])
    write_czi(folder / "zeiss.czi", image[None], "SYX", {"X": 0.5, "Y": 0.5})
    (folder / "notes.txt").write_text("not an image")
    return image


def _columns(path):
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def test_a_folder_of_mixed_formats(tmp_path, random_unet):
    _folder(tmp_path / "in")
    out = tmp_path / "out"
    events, summary = collect(iter_run_batch(str(random_unet), str(tmp_path / "in"), str(out), pattern="images",
                                             workers=0, device="cpu"))
    done = {e.path.rsplit("/", 1)[-1]: e.status for e in events if isinstance(e, FileDone)}
    assert done == {"plain.tif": "ok", "calibrated.ome.tif": "ok", "leica.lif": "ok", "zeiss.czi": "ok"}
    assert summary.ok == 4
    assert "area_um2" in _columns(out / "leica_objects.csv")
    assert "area_um2" in _columns(out / "zeiss_objects.csv")
    assert "area_um2" not in _columns(out / "plain_objects.csv")  # no pixel size: pixels only
    assert tifffile.imread(out / "leica_labels.tif").shape == (64, 80)
    assert {row["reading"] for row in read_manifest(out / "manifest.csv").values()} == {""}

    # another scene is another reading: recorded, and a resume does not skip the files done with the first
    events, summary = collect(iter_run_batch(str(random_unet), str(tmp_path / "in"), str(out), pattern="*.lif",
                                             workers=0, device="cpu", scene=1, skip_existing=True))
    assert summary.ok == 1 and summary.skipped == 0
    assert read_manifest(out / "manifest.csv")["leica.lif"]["reading"] == "scene=1"
    events, summary = collect(iter_run_batch(str(random_unet), str(tmp_path / "in"), str(out), pattern="*.lif",
                                             workers=0, device="cpu", scene=1, skip_existing=True))
    assert summary.skipped == 1


def test_cli_reads_a_scene_and_a_channel(tmp_path, random_unet, capsys):
    image, _ = make_nuclei((64, 80), seed=4)
    two = np.stack([image, image // 2])  # CYX
    path = write_lif(tmp_path / "exp.lif", [("overview", image, "YX", {"X": 0.5, "Y": 0.5}),
                                            ("dapi+gfp", two, "CYX", {"X": 0.5, "Y": 0.5})])
    assert main(["predict", "--model", str(random_unet), "--input", str(path), "--scene", "dapi+gfp",
                 "--channel", "0", "--output", str(tmp_path / "l.tif"), "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "l.tif").shape == (64, 80)
    capsys.readouterr()
    assert main(["predict", "--model", str(random_unet), "--input", str(path), "--scene", "3",
                 "--output", str(tmp_path / "l2.tif"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "image 3 asked for, but the file holds 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l2.tif").exists()
