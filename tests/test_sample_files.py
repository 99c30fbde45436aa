"""The TIFFs shipped in sample_data/ are exactly what scripts/make_sample_data.py generates.

Guards refactorings of :mod:`napari_seglab.core.synthetic` and
:mod:`napari_seglab.core.synthetic._scribbles`: a change in the order of random draws
changes the samples (and every figure measured on them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_sample_data.py"


def run_check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--out", str(folder)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_shipped_samples_regenerate_byte_for_byte():
    result = run_check(ROOT / "sample_data")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_check_names_a_sample_that_differs(tmp_path):
    for path in (ROOT / "sample_data").glob("*.tif"):
        shutil.copy(path, tmp_path / path.name)
    scribbles = tmp_path / "nuclei_train_scribbles.tif"
    data = bytearray(scribbles.read_bytes())
    data[-1] ^= 1  # one pixel of the last strip
    scribbles.write_bytes(bytes(data))
    result = run_check(tmp_path)
    assert result.returncode == 1
    assert "nuclei_train_scribbles.tif" in result.stderr and "nuclei_train.tif," not in result.stderr


def test_the_boxes_csv_is_the_box_of_every_shipped_instance():
    import tifffile

    from napari_seglab.core.labels import label_box_rows, read_boxes_csv

    instances = tifffile.imread(ROOT / "sample_data" / "nuclei_train_instances.tif")
    expected = [(r["y0"], r["x0"], r["y1"], r["x1"], r["class"]) for r in label_box_rows(instances, "YX", "instances")]
    shipped = [(r["y0"], r["x0"], r["y1"], r["x1"], r["class"])
               for r in read_boxes_csv(ROOT / "sample_data" / "nuclei_boxes.csv")]
    assert shipped == expected and len(shipped) == len(set(instances.ravel().tolist()) - {0})
    assert (ROOT / "sample_data" / "nuclei_boxes.csv").read_text().splitlines()[0] == "y0,x0,y1,x1,class"
