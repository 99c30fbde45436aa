"""``pip install napari-seglab`` without extras: the CLI and Dask workers run with no napari or Qt.

Run by ``make headless-test`` (and CI) in ``.venv-headless``, a venv holding
the package as a wheel and its required dependencies only. In a venv where
napari is importable (the dev venv) these tests are skipped: they prove
something only where the GUI stack is absent.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from importlib.resources import as_file, files
from pathlib import Path

import pytest

GUI_PACKAGES = ("napari", "qtpy", "magicgui", "superqt", "vispy", "PyQt5", "PyQt6", "PySide2", "PySide6")

if importlib.util.find_spec("napari") is not None:
    pytest.skip("napari is installed here; the headless install test runs in .venv-headless "
                "(make headless-test)", allow_module_level=True)

import numpy as np  # noqa: E402
import tifffile  # noqa: E402

SEGLAB = Path(sys.executable).with_name("seglab")  # the console script pip installed
TIMEOUT_S = 300


def seglab(*args: str) -> subprocess.CompletedProcess:
    """Run the installed ``seglab`` command; fail the test with its stderr if it does not exit 0."""
    result = subprocess.run([str(SEGLAB), *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"seglab {args[0]} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def packaged_sample(name: str, folder: Path) -> Path:
    """A sample TIFF as the installed package ships it, copied to ``folder``."""
    resource = files("napari_seglab") / "sample_data" / name
    assert resource.is_file(), f"the installed package does not ship sample_data/{name}"
    with as_file(resource) as path:
        target = folder / name
        target.write_bytes(Path(path).read_bytes())
    return target


def test_no_gui_package_is_installed():
    installed = [name for name in GUI_PACKAGES if importlib.util.find_spec(name) is not None]
    assert not installed, f"a plain install pulled in {installed}"
    result = subprocess.run([sys.executable, "-c", "import napari"], capture_output=True, text=True)
    assert result.returncode != 0


def test_package_ships_its_napari_manifest():
    assert (files("napari_seglab") / "napari.yaml").is_file()


def test_widgets_without_napari_say_how_to_install_it():
    result = subprocess.run([sys.executable, "-c", "import napari_seglab._widgets.train"],
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ")
    assert 'pip install "napari-seglab[napari]"' in last


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A model trained by the installed ``seglab train`` on the packaged scribbles sample."""
    folder = tmp_path_factory.mktemp("headless_train")
    image = packaged_sample("nuclei_train.tif", folder)
    scribbles = packaged_sample("nuclei_train_scribbles.tif", folder)
    out = folder / "nuclei.pt"
    seglab("train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
           "--model-out", str(out), "--preset", "fast", "--patch", "64", "--batch-size", "2",
           "--epochs", "1", "--steps-per-epoch", "3", "--device", "cpu")
    assert out.is_file()
    return out


def test_train_and_predict(model, tmp_path):
    image = packaged_sample("nuclei_test.tif", tmp_path)
    labels = tmp_path / "labels.tif"
    seglab("predict", "--model", str(model), "--input", str(image), "--output", str(labels), "--device", "cpu")
    predicted = tifffile.imread(labels)
    assert predicted.shape == tifffile.imread(image).shape
    assert np.issubdtype(predicted.dtype, np.integer)


def test_batch_on_a_dask_cluster(model, tmp_path):
    from distributed import Client, LocalCluster

    def loaded_modules(gui_packages=GUI_PACKAGES) -> tuple[list[str], bool]:
        """On a Dask worker: (GUI packages loaded, whether SegLab's batch code ran there).

        (A nested function: cloudpickle sends it by value; the worker cannot import this module.)
        """
        import sys

        tops = {name.split(".")[0] for name in sys.modules}
        return sorted(tops & set(gui_packages)), "napari_seglab.core.batch._task" in sys.modules

    image = tifffile.imread(packaged_sample("nuclei_test.tif", tmp_path))
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    names = ["left", "right"]
    tifffile.imwrite(inputs / "left.tif", image[:96, :128])
    tifffile.imwrite(inputs / "right.tif", image[-96:, -128:])

    # one worker process, started by this (headless) interpreter, as `dask worker` would be
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        seglab("batch", "--model", str(model), "--input-dir", str(inputs), "--output-dir", str(outputs),
               "--scheduler", cluster.scheduler_address, "--device", "cpu")
        (gui, ran_batch), = client.run(loaded_modules).values()

    assert ran_batch, "the Dask worker never ran SegLab's batch code"
    assert gui == [], f"the Dask worker loaded {gui}"
    for name in names:
        labels = tifffile.imread(outputs / f"{name}_labels.tif")
        assert labels.shape == (96, 128)
    with open(outputs / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(row["input"]).stem for row in rows if row["status"] == "ok") == names


def test_the_samples_open_without_napari():
    """The npe2 sample functions return plain layer data: a script can use them without the GUI."""
    from napari_seglab._sample_data import nuclei_with_instances, nuclei_with_scribbles

    (image, _, kind), (scribbles, meta, label_kind) = nuclei_with_scribbles()
    assert (kind, label_kind) == ("image", "labels")
    assert image.shape == scribbles.shape and set(np.unique(scribbles)) <= {0, 1, 2}
    assert meta["name"]
    assert [k for *_, k in nuclei_with_instances()] == ["image", "labels"]
