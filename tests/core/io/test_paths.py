"""Paths are normalised once: an output folder reached through a symlink works like any other."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_seglab.core.batch import iter_run_batch, read_manifest
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import FileDone, collect
from napari_seglab.core.io import folder_path, safe_child


def _inputs(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i}.tif", (rng.random((48, 40)) * 200).astype(np.uint8))


@pytest.mark.slow
def test_batch_into_a_symlinked_output_folder_writes_every_file_and_resumes(tiny_model, tmp_path):
    inp, real = tmp_path / "in", tmp_path / "real"
    _inputs(inp)
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)

    events, summary = collect(iter_run_batch(str(tiny_model), str(inp), str(link), workers=0, device="cpu"))
    files = [e for e in events if isinstance(e, FileDone)]
    assert [e.status for e in files] == ["ok", "ok", "ok"]
    assert (summary.ok, summary.failed) == (3, 0)
    rows = read_manifest(real / "manifest.csv")
    assert sorted(rows) == ["img0.tif", "img1.tif", "img2.tif"]
    assert rows["img1.tif"]["outputs"] == "img1_labels.tif;img1_objects.csv"  # relative to the folder
    assert all((real / f"img{i}_labels.tif").stat().st_size > 0 for i in range(3))

    # resume through the link: everything is recognised as done
    events, summary = collect(iter_run_batch(str(tiny_model), str(inp), str(link), workers=0, device="cpu",
                                        skip_existing=True))
    assert [e.status for e in events if isinstance(e, FileDone)] == ["skipped"] * 3
    assert (summary.ok, summary.skipped) == (0, 3)
    # and through the real path: the same folder, the same manifest
    events, summary = collect(iter_run_batch(str(tiny_model), str(inp), str(real), workers=0, device="cpu",
                                        skip_existing=True))
    assert summary.skipped == 3


def test_batch_from_a_symlinked_input_folder_into_an_output_folder_inside_it(tiny_model, tmp_path):
    real = tmp_path / "real_in"
    _inputs(real, 2)
    link = tmp_path / "in_link"
    link.symlink_to(real, target_is_directory=True)
    # the output folder sits inside the input folder, named through the link: never read back as inputs
    _, summary = collect(iter_run_batch(str(tiny_model), str(link), str(link / "out"), workers=0, device="cpu"))
    assert (summary.total, summary.ok) == (2, 2)
    _, summary = collect(iter_run_batch(str(tiny_model), str(link), str(real / "out"), workers=0, device="cpu",
                                   skip_existing=True))
    assert (summary.total, summary.skipped) == (2, 2)


def test_an_output_folder_that_is_the_input_folder_through_a_link_is_refused(tiny_model, tmp_path):
    inp = tmp_path / "in"
    _inputs(inp, 1)
    (tmp_path / "alias").symlink_to(inp, target_is_directory=True)
    with pytest.raises(InputError, match="is the input folder"):
        collect(iter_run_batch(str(tiny_model), str(inp), str(tmp_path / "alias"), workers=0))


def test_folder_path_and_safe_child_agree_on_resolved_paths(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    folder = folder_path(tmp_path / "link")
    assert folder == (tmp_path / "real").resolve() and folder.is_absolute()
    child = safe_child(folder, "sub/a_labels.tif")
    assert child.relative_to(folder).as_posix() == "sub/a_labels.tif"
    with pytest.raises(InputError, match="escape"):
        safe_child(folder, "../x.tif")


def test_an_output_name_that_is_a_link_to_an_input_is_refused(tiny_model, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, 1)
    out.mkdir()
    (out / "img0_labels.tif").symlink_to(inp / "img0.tif")
    before = (inp / "img0.tif").read_bytes()
    with pytest.raises(InputError, match="overwrite an input"):
        collect(iter_run_batch(str(tiny_model), str(inp), str(out), workers=0, device="cpu"))
    assert (inp / "img0.tif").read_bytes() == before
