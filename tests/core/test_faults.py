"""Faults: writers killed mid-write, a batch killed or stopped mid-file, mismatched checkpoints and labels.

The SIGKILL tests run the writer in a subprocess whose real writer is
patched to write part of the file and then kill its own process, the way a
power cut or the OOM killer would end it. What a user relies on afterwards:
the previous file under the final name is intact, nothing partial sits
under a final name (only hidden ``.name.tmp-*`` leftovers), and a batch
resumed with ``skip_existing`` finishes the rest.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tifffile
import torch

from napari_seglab.core.batch import ManifestWriter, iter_run_batch, read_manifest
from napari_seglab.core.data import Normalization
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import FileDone, TrainStep, collect
from napari_seglab.core.io import write_csv, write_tiff
from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint
from napari_seglab.core.predict import _forward as forward_module
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.synthetic import make_nuclei, make_scribbles
from napari_seglab.core.train import TrainConfig, iter_train

# Patches installed in a child process: the real writer writes part of the file, flushes, and the
# process SIGKILLs itself. ``ARMED[0]`` says whether the next write dies (always, unless a test arms it).
DYING_WRITERS = """
import csv, io, os, signal
import tifffile
ARMED = [True]
_real_imwrite = tifffile.imwrite

def _die():
    os.kill(os.getpid(), signal.SIGKILL)

def dying_imwrite(file, data, **kwargs):
    if not ARMED[0]:
        return _real_imwrite(file, data, **kwargs)
    buf = io.BytesIO()
    _real_imwrite(buf, data, **kwargs)
    with open(file, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
    _die()

class DyingDictWriter(csv.DictWriter):
    def __init__(self, f, *args, **kwargs):
        super().__init__(f, *args, **kwargs)
        self._file = f
    def writerows(self, rows):
        rows = list(rows)
        if not ARMED[0]:
            return super().writerows(rows)
        super().writerows(rows[: max(1, len(rows) // 2)])
        self._file.flush()
        _die()

tifffile.imwrite = dying_imwrite
csv.DictWriter = DyingDictWriter
"""


def run_killed(body: str) -> None:
    """Run DYING_WRITERS + ``body`` in a fresh interpreter; it must end by SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", DYING_WRITERS + textwrap.dedent(body)], capture_output=True,
                          text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def hidden_leftovers(folder) -> list[str]:
    """Names of hidden files in ``folder`` (what a killed atomic writer may leave)."""
    return sorted(p.name for p in folder.rglob(".*"))


def read_rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- single writers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiff", "csv", "manifest"])
def test_writer_killed_mid_write_keeps_the_previous_file(tmp_path, kind):
    """SIGKILL while replacing a good file: the old content survives, no partial file under its name."""
    name = {"tiff": "cells_labels.tif", "csv": "cells_objects.csv", "manifest": "manifest.csv"}[kind]
    path = tmp_path / name
    old_rows = [{"label": i, "area": 10 * i} for i in range(1, 6)]
    if kind == "tiff":
        write_tiff(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), axes="YX")
        body = f"""
            import numpy as np
            from napari_seglab.core.io import write_tiff
            write_tiff({str(path)!r}, np.ones((256, 256), np.uint16), axes="YX", compression=None)
        """
    elif kind == "csv":
        write_csv(path, old_rows)
        body = f"""
            from napari_seglab.core.io import write_csv
            write_csv({str(path)!r}, [{{"label": i, "area": i}} for i in range(1, 2000)])
        """
    else:
        writer = ManifestWriter(path)
        writer.start([])
        writer.finish([{"input": "a.tif", "status": "ok", "outputs": "a_labels.tif", "started": "2024-01-01T00:00:00",
                        "finished": "2024-01-01T00:00:01"}])
        body = f"""
            from napari_seglab.core.batch import ManifestWriter
            rows = [{{"input": f"f{{i}}.tif", "status": "failed", "error": "x"}} for i in range(500)]
            ManifestWriter({str(path)!r}).finish(rows)
        """
    before = path.read_bytes()
    run_killed(body)

    assert path.read_bytes() == before
    if kind == "tiff":
        assert tifffile.imread(path).shape == (64, 64)
    elif kind == "csv":
        assert read_rows(path) == [{k: str(v) for k, v in r.items()} for r in old_rows]
    else:
        assert list(read_manifest(path)) == ["a.tif"]
    leftovers = hidden_leftovers(tmp_path)
    assert leftovers, "the writer was not killed mid-write"
    assert all(n.startswith(f".{name}.tmp-") for n in leftovers), leftovers
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [name]


# ----------------------------------------------------------------------------- batch runs

FILES = ("a.tif", "b.tif", "c.tif")


@pytest.fixture(scope="module")
def random_model(random_unet):
    """The session's random-weight U-Net checkpoint (batch faults do not need a trained model)."""
    return str(random_unet)


def write_inputs(folder, stack_second: bool = False) -> dict[str, tuple]:
    """Three small nuclei TIFFs (the second an 8-plane stack when asked); returns {name: shape}."""
    folder.mkdir()
    shapes = {}
    for i, name in enumerate(FILES):
        shape = (8, 64, 64) if (stack_second and i == 1) else (64, 64)
        img, _ = make_nuclei(shape, seed=i)
        tifffile.imwrite(folder / name, img, photometric="minisblack")
        shapes[name] = shape
    return shapes


def check_outputs_valid(out, shapes: dict[str, tuple]) -> None:
    """Every output under a final name is complete: labels open with the input's shape, tables parse."""
    for path in out.glob("*_labels.tif"):
        assert tifffile.imread(path).shape == shapes[path.name.replace("_labels.tif", ".tif")], path.name
    for path in out.glob("*_objects.csv"):
        with open(path, newline="") as fh:
            header = next(csv.reader(fh))
        assert "label" in header and "area" in header
        read_rows(path)


def drive(gen) -> tuple[list[FileDone], object]:
    events, result = collect(gen)
    return [e for e in events if isinstance(e, FileDone)], result


@pytest.mark.slow
@pytest.mark.parametrize("target", ["b_labels.tif", "b_objects.csv", "manifest row"])
def test_batch_killed_mid_second_file_then_resumes(random_model, tmp_path, target):
    """SIGKILL while the second file's outputs (or its manifest row) are written."""
    inp, out = tmp_path / "in", tmp_path / "out"
    shapes = write_inputs(inp)
    run_killed(f"""
        ARMED[0] = False
        import napari_seglab.core.batch._manifest as mf
        from napari_seglab.core.batch import iter_run_batch
        from napari_seglab.core.events import drive
        TARGET = {target!r}

        def arming(real):
            def wrapper(path, *args, **kwargs):
                ARMED[0] = os.path.basename(str(path)) == TARGET
                try:
                    return real(path, *args, **kwargs)
                finally:
                    ARMED[0] = False
            return wrapper

        import napari_seglab.core.batch._task as task_module
        task_module.write_tiff, task_module.write_csv = arming(task_module.write_tiff), arming(task_module.write_csv)
        real_append = mf.ManifestWriter.append

        def append(self, row):
            if TARGET == "manifest row" and row["input"] == "b.tif":
                line = ",".join(str(v) for v in mf.manifest_row(row).values())
                self._fh.write(line[: len(line) // 2])  # half a row reaches the disk
                self._fh.flush()
                os.fsync(self._fh.fileno())
                _die()
            real_append(self, row)

        mf.ManifestWriter.append = append
        drive(iter_run_batch({random_model!r}, {str(inp)!r}, {str(out)!r}, workers=0, device="cpu"))
    """)

    rows = read_manifest(out / "manifest.csv")
    assert list(rows) == ["a.tif"] and rows["a.tif"]["status"] == "ok"
    assert sorted(rows["a.tif"]["outputs"].split(";")) == ["a_labels.tif", "a_objects.csv"]
    check_outputs_valid(out, shapes)
    finals = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    done_b = {"b_labels.tif": [], "b_objects.csv": ["b_labels.tif"], "manifest row": ["b_labels.tif", "b_objects.csv"]}
    assert finals == sorted(["a_labels.tif", "a_objects.csv", "manifest.csv", *done_b[target]])
    assert all(".tmp-" in n for n in hidden_leftovers(out))

    events, summary = drive(iter_run_batch(random_model, str(inp), str(out), workers=0, device="cpu",
                                      skip_existing=True))
    assert [e.status for e in events] == ["skipped", "ok", "ok"]
    assert (summary.ok, summary.skipped, summary.failed) == (2, 1, 0)
    rows = read_manifest(out / "manifest.csv")
    assert list(rows) == list(FILES) and [r["status"] for r in rows.values()] == ["skipped", "ok", "ok"]
    check_outputs_valid(out, shapes)
    assert {p.name for p in out.glob("*_labels.tif")} == {"a_labels.tif", "b_labels.tif", "c_labels.tif"}


@pytest.mark.slow
def test_stop_mid_stack_returns_without_predicting_further_planes(random_model, tmp_path, monkeypatch):
    """Stop pressed while the second file (a stack of one-tile planes) predicts.

    The run ends after the forward pass in flight: no further plane is
    predicted, the stopped file leaves no output and no manifest row, and
    the finished file's outputs and row stay valid.
    """
    inp, out = tmp_path / "in", tmp_path / "out"
    shapes = write_inputs(inp, stack_second=True)
    stop = threading.Event()
    calls: list[bool] = []  # per forward pass: was stop already set?
    real_forward = forward_module._forward

    def counting_forward(lm, chw, *, compact):
        calls.append(stop.is_set())
        if len(calls) == 2:  # the first plane of b.tif (a.tif is one 64x64 tile)
            stop.set()
        return real_forward(lm, chw, compact=compact)

    monkeypatch.setattr(forward_module, "_forward", counting_forward)
    events, summary = drive(iter_run_batch(random_model, str(inp), str(out), workers=0, device="cpu", stop=stop))

    assert calls == [False, False], "forward passes ran after stop was set"
    assert [(e.path.split("/")[-1], e.status) for e in events] == [("a.tif", "ok")]
    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (3, 1, 0, 0)
    assert list(read_manifest(summary.manifest)) == ["a.tif"]
    assert [r["input"] for r in read_rows(summary.summary_csv)] == ["a.tif"]
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "a_objects.csv", "manifest.csv", "summary.csv"]
    check_outputs_valid(out, shapes)


# ----------------------------------------------------------------------------- checkpoints that do not fit


def _save(path, spec_of_weights: ModelSpec, meta_model: dict | None = None):
    model, _ = build_model(spec_of_weights)
    meta = {"model": meta_model or spec_of_weights.to_dict(), "label_mode": "scribbles",
            "normalization": Normalization().to_dict()}
    return save_checkpoint(path, model, meta)


R18 = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2)


@pytest.mark.parametrize("meta_change,message", [
    (dict(encoder="resnet34"), "weights do not fit"),  # metadata claims a bigger encoder
    (dict(in_channels=3), "weights do not fit"),
    (dict(n_classes=4), "weights do not fit"),
    (dict(arch="FPN"), "weights do not fit"),
    (dict(family="fcn", arch="fcn_resnet50"), "weights do not fit"),
    (dict(family="stardist"), "unknown model family"),
    (dict(encoder=None), "malformed checkpoint metadata"),
    (dict(in_channels="three"), "malformed checkpoint metadata"),
    (dict(n_classes=10**6), "malformed checkpoint metadata"),
])
def test_metadata_that_does_not_match_the_weights_is_refused(tmp_path, meta_change, message):
    path = _save(tmp_path / "m.pt", R18, {**R18.to_dict(), **meta_change})
    with pytest.raises(InputError, match=message):
        load_model(path, "cpu")


@pytest.mark.parametrize("payload,message", [
    ({"meta": 5}, "has no model description"),
    ({"meta": {"model": "unet"}}, "'model' is a str"),
    ({"meta": {"model": R18.to_dict(), "normalization": "none"}}, "'normalization' is not a mapping"),
    ({"meta": {"model": R18.to_dict(), "normalization": {"lo": ["a"]}}}, "normalization.lo holds non-numbers"),
    ({"version": "1"}, "version '1' is not a number"),
    ({"state_dict": [1, 2]}, "holds no weights"),
])
def test_malformed_checkpoint_is_an_input_error(tmp_path, payload, message):
    """A damaged or crafted file: one clear InputError, never a TypeError from deep inside."""
    path = tmp_path / "m.pt"
    torch.save({"format": "napari-seglab", "version": 1, "meta": {"model": R18.to_dict()}, "state_dict": {},
                **payload}, path)
    with pytest.raises(InputError, match=message):
        load_model(path, "cpu")


@pytest.mark.parametrize("weights_channels,image_shape,axes", [
    (3, (64, 64), "YX"),  # an RGB model given a grey image
    (1, (64, 64, 2), "YXC"),  # a grey model given two channels
    (2, (4, 64, 64), "ZYX"),  # a two-channel model given a grey stack
])
def test_channel_count_mismatch_is_refused_before_predicting(tmp_path, weights_channels, image_shape, axes):
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=weights_channels, n_classes=2)
    lm = load_model(_save(tmp_path / "m.pt", spec), "cpu")
    gen = iter_predict_image(lm, np.ones(image_shape, np.uint16), axes)
    with pytest.raises(InputError, match=f"trained on {weights_channels}-channel images"):
        next(gen)


# ----------------------------------------------------------------------------- labels through iter_train()


def _labels_case(case: str, instances: np.ndarray) -> np.ndarray:
    if case == "float":
        return make_scribbles(instances, seed=0).astype(np.float32)
    if case == "negative":
        return make_scribbles(instances, seed=0).astype(np.int16) - 1
    if case == "0/255":
        return np.where(instances > 0, 255, 0).astype(np.uint8)
    if case == "empty":
        return np.zeros(instances.shape, np.uint8)
    return np.where(instances > 0, 2, 0).astype(np.uint8)  # single class: objects painted, no background


@pytest.mark.parametrize("case,message", [
    ("float", "floating point"), ("negative", "negative"), ("0/255", "0/255"), ("empty", "empty"),
    ("single", "single class"),
])
def test_training_refuses_bad_labels_before_any_step(tmp_path, case, message):
    img, inst = make_nuclei((128, 128), seed=4)
    out = tmp_path / "m.pt"
    cfg = TrainConfig(label_mode="scribbles", encoder="resnet18", epochs=1, steps_per_epoch=2, patch=64,
                      batch_size=2, device="cpu", model_out=str(out))
    gen = iter_train([img], [_labels_case(case, inst)], cfg)
    seen = []
    with pytest.raises(InputError, match=message):
        for ev in gen:
            seen.append(ev)
    assert not any(isinstance(ev, TrainStep) for ev in seen)
    assert seen == []  # reported before the model is even built
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no .last.pt
