"""The ``seglab`` command line, called in-process through ``main([...])``.

One tiny model is trained through the CLI per module and shared by the
predict, evaluate, export and info tests.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

from napari_seglab.cli import main

TRAIN_FAST = ["--encoder", "resnet18", "--patch", "64", "--batch-size", "2", "--epochs", "1",
              "--steps-per-epoch", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Folder with a (64, 96) uint16 nuclei image, its scribbles and its instances."""
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    folder = tmp_path_factory.mktemp("cli_data")
    image, instances = make_nuclei(shape=(64, 96), seed=0)
    tifffile.imwrite(folder / "img.tif", image)
    tifffile.imwrite(folder / "scribbles.tif", make_scribbles(instances, seed=0))
    tifffile.imwrite(folder / "instances.tif", instances)
    return folder


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Path of a model trained by ``seglab train`` (and the captured stdout)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    model = tmp_path_factory.mktemp("cli_model") / "m.pt"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "scribbles.tif"),
                     "--label-mode", "scribbles", "--model-out", str(model), *TRAIN_FAST])
    assert code == 0, err.getvalue()
    return model, out.getvalue(), err.getvalue()


def error_line(capsys) -> str:
    """The captured stderr, which must be exactly one ``seglab: error:`` line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("seglab: error: ")
    return err[0]


# ----------------------------------------------------------------------------- train


def test_train_saves_a_loadable_model_and_reports_progress(trained):
    from napari_seglab.core.models import load_checkpoint

    model, out, err = trained
    ckpt = load_checkpoint(model)
    assert ckpt.spec.encoder == "resnet18" and ckpt.label_mode == "scribbles"
    assert ckpt.meta["patch"] == 64
    assert "epoch 1/1" in err and "loss" in err and "val Dice" in err
    last = out.strip().splitlines()[-1]
    assert str(model) in last and ("val Dice" in last or "train loss" in last)


def test_train_missing_image_is_one_line_error(data, tmp_path, capsys):
    code = main(["train", "--image", str(tmp_path / "nope.tif"), "--labels", str(data / "scribbles.tif"),
                 "--label-mode", "scribbles", "--model-out", str(tmp_path / "m.pt"), *TRAIN_FAST])
    assert code == 2
    assert "nope.tif" in error_line(capsys)
    assert not (tmp_path / "m.pt").exists()


def test_train_labels_of_wrong_shape(data, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "small.tif", np.ones((32, 32), np.uint8))
    code = main(["train", "--image", str(data / "img.tif"), "--labels", str(tmp_path / "small.tif"),
                 "--label-mode", "scribbles", "--model-out", str(tmp_path / "m.pt"), *TRAIN_FAST])
    assert code == 2
    assert "shape" in error_line(capsys)


@pytest.mark.parametrize("content", [b"", b"this is not a TIFF file at all\n"], ids=["empty", "garbage"])
def test_train_unreadable_tiff(data, tmp_path, capsys, content):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(content)
    code = main(["train", "--image", str(bad), "--labels", str(data / "scribbles.tif"),
                 "--label-mode", "scribbles", "--model-out", str(tmp_path / "m.pt"), *TRAIN_FAST])
    assert code == 2
    assert "bad.tif" in error_line(capsys)


def test_train_unknown_encoder_lists_valid_names(data, tmp_path, capsys):
    args = ["train", "--image", str(data / "img.tif"), "--labels", str(data / "scribbles.tif"),
            "--label-mode", "scribbles", "--model-out", str(tmp_path / "m.pt"), *TRAIN_FAST]
    args[args.index("resnet18")] = "resnet9999"
    assert main(args) == 2
    line = error_line(capsys)
    assert "resnet9999" in line and "resnet18" in line


def test_train_unknown_family(data, tmp_path, capsys):
    code = main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "scribbles.tif"),
                 "--label-mode", "scribbles", "--model-out", str(tmp_path / "m.pt"), "--family", "yolo",
                 *TRAIN_FAST])
    assert code == 2
    line = error_line(capsys)
    assert "yolo" in line and "unet" in line and "maskrcnn" in line


def test_train_refuses_to_overwrite_an_input(data, tmp_path, capsys):
    labels = tmp_path / "labels.tif"
    shutil.copy(data / "scribbles.tif", labels)
    before = labels.read_bytes()
    code = main(["train", "--image", str(data / "img.tif"), "--labels", str(labels),
                 "--label-mode", "scribbles", "--model-out", str(labels), *TRAIN_FAST])
    assert code == 2
    assert "overwrite" in error_line(capsys)
    assert labels.read_bytes() == before


def test_argparse_errors_end_with_the_reason(capsys):
    assert main(["train", "--image", "x.tif"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage:") and "required" in err[-1]


# ----------------------------------------------------------------------------- predict


def test_predict_writes_labels_probabilities_and_boxes(trained, data, tmp_path, capsys):
    model = trained[0]
    out, probs, boxes = tmp_path / "labels.tif", tmp_path / "probs.tif", tmp_path / "boxes.csv"
    code = main(["predict", "--model", str(model), "--input", str(data / "img.tif"), "--output", str(out),
                 "--probabilities", str(probs), "--boxes", str(boxes), "--boxes-from-labels",
                 "--device", "cpu", "--tile", "64"])
    assert code == 0, capsys.readouterr().err
    assert "tile" in capsys.readouterr().err
    labels = tifffile.imread(out)
    assert labels.shape == (64, 96) and labels.dtype == np.uint16
    p = tifffile.imread(probs)
    assert p.dtype == np.float32 and p.shape == (2, 64, 96)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)
    with open(boxes, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["y0", "x0", "y1", "x1", "class", "score", "plane"]
    for row in rows:
        assert 0 <= int(row["y0"]) < int(row["y1"]) <= 64 and 0 <= int(row["x0"]) < int(row["x1"]) <= 96
        assert float(row["score"]) == 1.0


def test_predict_output_equal_to_input_is_refused(trained, data, tmp_path, capsys):
    image = tmp_path / "img.tif"
    shutil.copy(data / "img.tif", image)
    before = image.read_bytes()
    code = main(["predict", "--model", str(trained[0]), "--input", str(image), "--output", str(image),
                 "--device", "cpu"])
    assert code == 2
    assert "overwrite" in error_line(capsys)
    assert image.read_bytes() == before


def test_predict_with_a_file_that_is_not_a_checkpoint(data, tmp_path, capsys):
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not a checkpoint" * 10)
    code = main(["predict", "--model", str(fake), "--input", str(data / "img.tif"),
                 "--output", str(tmp_path / "out.tif"), "--device", "cpu"])
    assert code == 2
    assert "fake.pt" in error_line(capsys)
    assert not (tmp_path / "out.tif").exists()


# ----------------------------------------------------------------------------- evaluate / info


def test_evaluate_identical_files_scores_one(data, capsys):
    assert main(["evaluate", "--pred", str(data / "instances.tif"), "--truth", str(data / "instances.tif")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["ap50"] == 1.0 and scores["dice"] == 1.0
    assert {"iou", "ap75", "ap90", "f1_50", "precision_50", "recall_50"} <= set(scores)


def test_evaluate_shape_mismatch(data, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "other.tif", np.zeros((10, 10), np.uint16))
    assert main(["evaluate", "--pred", str(tmp_path / "other.tif"), "--truth", str(data / "instances.tif")]) == 2
    assert "shape" in error_line(capsys)


def test_info_prints_the_metadata(trained, capsys):
    assert main(["info", str(trained[0])]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["model"]["encoder"] == "resnet18" and "unet" in doc["description"]


# ----------------------------------------------------------------------------- export


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_torchscript_matches_the_model(trained, tmp_path, capsys):
    import torch

    from napari_seglab.core.models import load_checkpoint, probabilities

    out = tmp_path / "m.torchscript.pt"
    assert main(["export", "--model", str(trained[0]), "--format", "torchscript", "--out", str(out)]) == 0
    scripted = torch.jit.load(str(out))
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        expected = probabilities(load_checkpoint(trained[0]).build("cpu")(x))
        np.testing.assert_allclose(scripted(x).numpy(), expected.numpy(), atol=1e-5)


def test_export_onnx_without_onnx_says_what_to_install(trained, tmp_path, capsys):
    try:
        import onnx  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("onnx is installed")
    assert main(["export", "--model", str(trained[0]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "install onnx" in error_line(capsys)


def test_export_unknown_format_is_an_argparse_error(trained, tmp_path, capsys):
    assert main(["export", "--model", str(trained[0]), "--format", "keras", "--out", str(tmp_path / "m")]) == 2
    assert "invalid choice" in capsys.readouterr().err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- batch / entry points


def test_batch_missing_folder(trained, tmp_path, capsys):
    code = main(["batch", "--model", str(trained[0]), "--input-dir", str(tmp_path / "none"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "no such folder" in error_line(capsys)


@pytest.mark.slow
def test_batch_runs_a_folder(trained, data, tmp_path, capsys):
    pytest.importorskip("napari_seglab.core.batch")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data / "img.tif", inputs / "a.tif")
    (inputs / "b.tif").write_bytes(b"garbage")
    code = main(["batch", "--model", str(trained[0]), "--input-dir", str(inputs),
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "2 files: ok 1, failed 1, skipped 0" in captured.out
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").shape == (64, 96)


@pytest.mark.slow
def test_console_script_help():
    import sys
    from pathlib import Path

    # the script sits beside the interpreter of the environment it was installed into
    beside = Path(sys.executable).parent / "seglab"
    exe = str(beside) if beside.exists() else shutil.which("seglab")
    assert exe is not None, "the seglab console script is not installed (pip install -e .)"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("train", "predict", "evaluate", "export", "batch"):
        assert command in done.stdout


def test_time_limit_alone_trains_until_the_time_is_up(data, tmp_path, monkeypatch, capsys):
    import napari_seglab.core.train as core_train
    from napari_seglab.core.models import Checkpoint

    seen = {}

    def fake_train(images, labels, config, *, axes=None, **kwargs):
        seen.update(config=config, axes=axes, shapes=[i.shape for i in images])
        yield from ()
        return core_train.TrainResult(checkpoint=Checkpoint(meta={"metrics": {"train_loss": 0.5, "epoch": 1}},
                                                            state_dict={}), path=config.model_out)

    monkeypatch.setattr(core_train, "iter_train", fake_train)
    code = main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "scribbles.tif"),
                 "--label-mode", "scribbles", "--model-out", str(tmp_path / "m.pt"), "--time-limit", "30",
                 "--encoder", "resnet18"])
    assert code == 0, capsys.readouterr().err
    config = seen["config"]
    assert config.epochs is None and config.time_limit == 30 and config.encoder == "resnet18"
    assert seen["axes"] == ["YX"] and seen["shapes"] == [(64, 96)]


def test_exit_codes_for_interrupt_and_unexpected_errors(data, monkeypatch, capsys):
    import napari_seglab.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    args = ["evaluate", "--pred", str(data / "instances.tif"), "--truth", str(data / "instances.tif")]
    monkeypatch.setattr(cli, "cmd_evaluate", interrupted)
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_evaluate", broken)
    assert main(args) == 1
    line = error_line(capsys)
    assert "RuntimeError: boom" in line and "--debug" in line
    assert main(["--debug", *args]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["seglab", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("napari_seglab", run_name="__main__")
    assert exc.value.code == 0
    assert "seglab" in capsys.readouterr().out


def test_predict_with_absent_stock_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import numpy as np
    import tifffile

    from napari_seglab.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint8))
    code = main(["predict", "--model", "stock:maskrcnn_coco", "--input", str(tmp_path / "img.tif"),
                 "--output", str(tmp_path / "out.tif")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not in the torch cache" in err[-1]
    assert not (tmp_path / "out.tif").exists()


# ----------------------------------------------------------------------------- presets, object size, partial objects


@pytest.mark.parametrize(("extra", "match"), [
    (["--preset", "fast", "--encoder", "resnet18"], "--preset or --encoder"),
    (["--diameter", "20", "--scale", "2"], "--diameter or --scale"),
    (["--scale", "9"], "--scale"),
    (["--diameter", "nan"], "--diameter"),
    (["--threads", "0"], "--threads"),
])
def test_train_model_choice_errors(data, tmp_path, capsys, extra, match):
    code = main(["train", "--image", str(data / "img.tif"), "--labels", str(data / "instances.tif"),
                 "--label-mode", "instances", "--model-out", str(tmp_path / "m.pt"), "--epochs", "1", *extra])
    assert code == 2 and match in error_line(capsys)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_train_partial_objects_with_a_preset_and_diameter(data, tmp_path):
    from napari_seglab.core.models import PRESETS, load_checkpoint

    inst = tifffile.imread(data / "instances.tif")
    partial = np.zeros(inst.shape, np.uint16)
    partial[inst == 0] = 1  # the background painted, then two whole objects; the rest unpainted
    partial[(inst > 0) & (inst < 3)] = inst[(inst > 0) & (inst < 3)] + 1
    partial[(inst >= 3)] = 0
    tifffile.imwrite(tmp_path / "partial.tif", partial)
    out = tmp_path / "m.pt"
    code = main(["train", "--image", str(data / "img.tif"), "--labels", str(tmp_path / "partial.tif"),
                 "--label-mode", "objects", "--model-out", str(out), "--preset", "fast", "--diameter", "12",
                 "--patch", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2",
                 "--device", "cpu", "--threads", "1", "--bf16", "off"])
    assert code == 0
    ckpt = load_checkpoint(out)
    assert ckpt.meta["scale"] == pytest.approx(2.0) and ckpt.label_mode == "objects"
    assert ckpt.spec.options["encoder_depth"] == PRESETS["fast"].encoder_depth
    labels = tmp_path / "labels.tif"
    assert main(["predict", "--model", str(out), "--input", str(data / "img.tif"), "--output", str(labels)]) == 0
    assert tifffile.imread(labels).shape == inst.shape
