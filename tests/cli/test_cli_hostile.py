"""Hostile files, odd names, impossible options and failing clusters, through the ``seglab`` CLI (issue 14).

What a user relies on: every such case ends in exit 2 with one line
``seglab: error: ...`` naming the problem (never exit 1, which is for
SegLab's own bugs), nothing is written on an error exit, memory stays
bounded, and earlier results (a manifest, a model) are never lost.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_seglab.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


# ----------------------------------------------------------------------------- hostile file makers


def write_bomb(path: Path, side: int = 100_000, rows_per_strip: int = 8) -> Path:
    """A ~100 KB TIFF declaring a side x side uint8 image whose strips all point at one zlib stream."""
    stream = zlib.compress(bytes(side * rows_per_strip), 9)
    n = -(-side // rows_per_strip)
    offsets_at = 8 + len(stream)
    counts_at = offsets_at + 4 * n
    ifd_at = counts_at + 4 * n
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
            (273, 4, n, offsets_at), (277, 3, 1, 1), (278, 4, 1, rows_per_strip), (279, 4, n, counts_at)]
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at)) + stream
    out += struct.pack(f"<{n}I", *([8] * n)) + struct.pack(f"<{n}I", *([len(stream)] * n))
    out += struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    path.write_bytes(bytes(out + struct.pack("<I", 0)))
    return path


def crafted(path: Path, source: Path, *, meta=None, state=None, **meta_changes) -> Path:
    """A copy of checkpoint ``source`` with its metadata changed as given, saved without cleaning."""
    payload = torch.load(source, weights_only=True)
    payload["meta"] = meta if meta is not None else {**payload["meta"], **meta_changes}
    if state is not None:
        payload["state_dict"] = state
    torch.save(payload, path)
    return path


def run_cli(*args: str, limit_as: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m napari_seglab ARGS`` in a fresh process, optionally under an address-space limit."""
    def limit() -> None:
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "napari_seglab", *args], capture_output=True, text=True,
                          env=env, preexec_fn=limit, timeout=timeout)


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seglab: error: "), lines
    return lines[0]


def error_line(capsys) -> str:
    return one_error_line(capsys.readouterr().err)


@pytest.fixture
def image(tmp_path, blobs):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, blobs[0])
    return path


@pytest.fixture
def scribbles(tmp_path, blobs):
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, blobs[1])
    return path


# ----------------------------------------------------------------------------- resource exhaustion


def test_bomb_tiff_is_refused_before_decoding(tmp_path, tiny_model, capsys):
    bomb = write_bomb(tmp_path / "bomb.tif")
    assert bomb.stat().st_size < 200_000
    code = main(["predict", "--model", str(tiny_model), "--input", str(bomb), "--output", str(tmp_path / "o.tif")])
    assert code == 2
    assert "100000x100000" in error_line(capsys)
    code = main(["evaluate", "--pred", str(bomb), "--truth", str(bomb)])
    assert code == 2 and "declares" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tif"]


@pytest.mark.slow
def test_bomb_under_a_memory_limit_exits_2(tmp_path, tiny_model):
    """A 1 GiB address-space limit: decoding the bomb would need 9.3 GiB; the header check refuses it."""
    bomb = write_bomb(tmp_path / "bomb.tif")
    proc = run_cli("predict", "--model", str(tiny_model), "--input", str(bomb), "--output",
                   str(tmp_path / "out.tif"), limit_as=2**30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "declares a 100000x100000" in one_error_line(proc.stderr)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.slow
def test_bomb_in_a_batch_fails_that_file_alone_under_a_memory_limit(tmp_path, tiny_model, blobs):
    """Batch (torch loaded, 6 GiB of address space): the bomb fails alone, the good file is done."""
    inp = tmp_path / "in"
    inp.mkdir()
    write_bomb(inp / "a_bomb.tif")
    tifffile.imwrite(inp / "b_good.tif", blobs[0])
    out = tmp_path / "out"
    proc = run_cli("batch", "--model", str(tiny_model), "--input-dir", str(inp), "--output-dir", str(out),
                   "--workers", "0", "--device", "cpu", limit_as=6 * 2**30)
    assert proc.returncode == 3, proc.stderr[-2000:]
    manifest = (out / "manifest.csv").read_text()
    assert "a_bomb.tif,failed" in manifest and "declares" in manifest
    assert "b_good.tif,ok" in manifest


def test_huge_patch_in_a_checkpoint_is_refused_before_export(tmp_path, tiny_model, capsys):
    bad = crafted(tmp_path / "m.pt", tiny_model, patch=10**7)
    code = main(["export", "--model", str(bad), "--format", "torchscript", "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert "patch = 10000000" in error_line(capsys)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_giant_encoder_over_small_weights_is_refused_without_building_it(tmp_path, tiny_model):
    """convnext_xxlarge (846 M parameters, ~3.4 GB) under a 6 GiB limit: refused from shapes alone."""
    meta = torch.load(tiny_model, weights_only=True)["meta"]
    bad = crafted(tmp_path / "m.pt", tiny_model, model={**meta["model"], "encoder": "tu-convnext_xxlarge"})
    proc = run_cli("info", str(bad), limit_as=6 * 2**30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "weights do not fit" in one_error_line(proc.stderr)


def test_metadata_nested_100000_levels_deep(tmp_path, tiny_model, capsys):
    meta = torch.load(tiny_model, weights_only=True)["meta"]
    path = tmp_path / "deep.pt"

    def make() -> None:
        deep: list = []
        for _ in range(100_000):
            deep = [deep]
        torch.save({"format": "napari-seglab", "version": 1, "meta": {**meta, "deep": deep}, "state_dict": {}},
                   path)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(10**6)
    threading.stack_size(512 * 2**20)  # pickling 100,000 levels needs a deep C stack
    try:
        worker = threading.Thread(target=make)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(0)
        sys.setrecursionlimit(old)
    assert main(["info", str(path)]) == 2
    assert "nested deeper than" in error_line(capsys)


@pytest.mark.parametrize("option,value,message", [
    ("--patch", "100000", "patch size 100000"),
    ("--time-limit", "nan", "time limit"),
    ("--time-limit", "inf", "time limit"),
    ("--time-limit", "-1", "time limit"),
    ("--seed", "-1", "seed"),
    ("--val-fraction", "1.5", "validation fraction"),
    ("--val-fraction", "nan", "validation fraction"),
    ("--focal-gamma", "inf", "focal gamma"),
    ("--lr", "nan", "learning rate"),
    ("--steps-per-epoch", "0", "steps per epoch"),
    ("--batch-size", "0", "batch size"),
])
def test_impossible_training_options_exit_2_before_training(image, scribbles, tmp_path, monkeypatch, capsys,
                                                            option, value, message):
    import napari_seglab.core.train as train_module

    monkeypatch.setattr(train_module, "iter_train", lambda *a, **k: pytest.fail("training started"))
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(tmp_path / "m.pt"), "--device", "cpu", option, value])
    assert code == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("extra", [
    ["--patch", "32", "--batch-size", "1"],
    ["--arch", "DeepLabV3Plus", "--batch-size", "1"],
])
def test_batch_size_1_where_batchnorm_cannot_train(image, scribbles, tmp_path, capsys, extra):
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(tmp_path / "m.pt"), "--device", "cpu", "--encoder", "resnet18", *extra])
    assert code == 2
    assert "--batch-size 2" in error_line(capsys)


@pytest.mark.slow
def test_batch_size_1_with_patch_64_trains(image, scribbles, tmp_path, capsys):
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(tmp_path / "m.pt"), "--device", "cpu", "--encoder", "resnet18",
                 "--patch", "64", "--batch-size", "1", "--epochs", "1", "--steps-per-epoch", "2", "--seed", "7"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "m.pt").is_file()


# ----------------------------------------------------------------------------- untrusted checkpoint metadata


@pytest.mark.parametrize("encoder", ["tu-../../x", "hf-hub:someone/model", "local-dir:/tmp/x", "tu-hf-hub:a/b",
                                     "tu-local-dir:/tmp", "../resnet18", "resnet18/../../x", ""])
def test_encoder_names_from_a_checkpoint_never_reach_timm(tmp_path, tiny_model, monkeypatch, capsys, encoder):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail(f"timm asked to build {a}"))
    meta = torch.load(tiny_model, weights_only=True)["meta"]
    bad = crafted(tmp_path / "m.pt", tiny_model, model={**meta["model"], "encoder": encoder})
    assert main(["info", str(bad)]) == 2
    assert "model.encoder" in error_line(capsys)


def test_path_like_timm_encoder_on_the_command_line(image, scribbles, tmp_path, capsys):
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(tmp_path / "m.pt"), "--encoder", "tu-../../x"])
    assert code == 2
    assert "registry" in error_line(capsys)


@pytest.mark.parametrize("change,field", [
    ({"normalization": {"low": -5.0, "high": 99.8}}, "normalization.low"),
    ({"normalization": {"low": 1.0, "high": 150.0}}, "normalization.high"),
    ({"normalization": {"low": 60.0, "high": 40.0}}, "normalization.low"),
    ({"normalization": {"low": float("nan"), "high": 99.0}}, "normalization.low"),
    ({"normalization": {"per_image": False, "lo": [0.0], "hi": []}}, "normalization.lo"),
    ({"patch": "256"}, "patch"),
    ({"patch": True}, "patch"),
    ({"patch": 8}, "patch"),
    ({"object_area": -3.0}, "object_area"),
    ({"object_area": float("inf")}, "object_area"),
    ({"object_area": "400"}, "object_area"),
    ({"pixel_size": [0.5]}, "pixel_size"),
    ({"pixel_size": [0.5, -1.0]}, "pixel_size"),
    ({"pixel_size": "0.5"}, "pixel_size"),
    ({"label_mode": 5}, "label_mode"),
    ({"label_mode": "everything"}, "label_mode"),
    ({"class_names": [1, 2]}, "class_names"),
    ({"class_names": ["x"] * 10_000}, "class_names"),
    ({"metrics": [0.5]}, "metrics"),
    ({"training": "yes"}, "training"),
    ({"huge": "x" * 200_000}, "meta.huge"),
    ({"many": list(range(300_000))}, "values"),
])
def test_malformed_metadata_fields_are_named(tmp_path, tiny_model, capsys, change, field):
    bad = crafted(tmp_path / "m.pt", tiny_model, **change)
    out = tmp_path / "o.tif"
    for argv in (["info", str(bad)], ["predict", "--model", str(bad), "--input", str(bad), "--output", str(out)]):
        if argv[0] == "predict":
            tifffile.imwrite(tmp_path / "i.tif", np.zeros((64, 64), np.uint8))
            argv[4] = str(tmp_path / "i.tif")
        assert main(argv) == 2
        assert field in error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("options,field", [
    ({"patch": "256"}, "model.options.patch"),
    ({"anchor_sizes": [8, 16]}, "model.options.anchor_sizes"),
    ({"detections_per_img": 10**9}, "model.options.detections_per_img"),
    ({"image_std": [0.0, 0.0, 0.0]}, "model.options.image_std"),
])
def test_malformed_detector_options_are_named(tmp_path, tiny_model, capsys, options, field):
    meta = torch.load(tiny_model, weights_only=True)["meta"]
    model = {**meta["model"], "family": "maskrcnn", "arch": "maskrcnn_resnet50_fpn", "options": options}
    bad = crafted(tmp_path / "m.pt", tiny_model, model=model, label_mode="instances")
    assert main(["info", str(bad)]) == 2
    assert field in error_line(capsys)


def test_init_whose_weights_do_not_fit_its_metadata_is_exit_2(image, scribbles, tmp_path, tiny_model, capsys):
    state = torch.load(tiny_model, weights_only=True)["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("decoder")}
    bad = crafted(tmp_path / "init.pt", tiny_model, state=state)
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(tmp_path / "m.pt"), "--init", str(bad), "--device", "cpu"])
    assert code == 2
    assert "weights do not fit" in error_line(capsys)
    code = main(["predict", "--model", str(bad), "--input", str(image), "--output", str(tmp_path / "o.tif")])
    assert code == 2 and "weights do not fit" in error_line(capsys)


@pytest.mark.slow
def test_torchscript_export_given_as_model_says_what_it_is(tmp_path, tiny_model, image, capsys):
    script = tmp_path / "m.ts.pt"
    assert main(["export", "--model", str(tiny_model), "--format", "torchscript", "--out", str(script)]) == 0
    capsys.readouterr()
    code = main(["predict", "--model", str(script), "--input", str(image), "--output", str(tmp_path / "o.tif")])
    assert code == 2
    line = error_line(capsys)  # exactly one line: no UserWarning before it
    assert "TorchScript export" in line and "torch.jit.load" in line
    assert main(["info", str(script)]) == 2 and "TorchScript" in error_line(capsys)


# ----------------------------------------------------------------------------- nothing written on failure


@pytest.fixture
def no_writes_in(monkeypatch):
    """Make a folder refuse new files (as a read-only folder does for a normal user; tests run as root)."""
    import napari_seglab.core.io._tiff as io_mod

    denied: list[Path] = []
    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and any(Path(path).parent == d for d in denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(io_mod.os, "open", guarded_open)
    return denied


@pytest.mark.parametrize("flag,name", [("--probabilities", "p.tif"), ("--boxes", "b.csv")])
@pytest.mark.parametrize("how", ["permission", "missing", "parent is a file"])
def test_predict_checks_every_output_before_the_first_write(tmp_path, tiny_model, image, capsys, no_writes_in,
                                                            flag, name, how):
    bad_dir = tmp_path / "unwritable"
    if how == "permission":
        bad_dir.mkdir()
        no_writes_in.append(bad_dir)
    elif how == "parent is a file":
        bad_dir.write_text("a file")
    labels = tmp_path / "labels.tif"
    code = main(["predict", "--model", str(tiny_model), "--input", str(image), "--output", str(labels),
                 flag, str(bad_dir / name), "--device", "cpu"])
    assert code == 2
    assert flag in error_line(capsys)
    assert not labels.exists()


def test_train_into_an_unwritable_folder_is_refused_before_training(image, scribbles, tmp_path, monkeypatch,
                                                                    capsys, no_writes_in):
    import napari_seglab.core.train as train_module

    monkeypatch.setattr(train_module, "iter_train", lambda *a, **k: pytest.fail("training started"))
    folder = tmp_path / "models"
    folder.mkdir()
    no_writes_in.append(folder)
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(folder / "m.pt")])
    assert code == 2
    assert "cannot write in folder" in error_line(capsys)


def _good_batch(tmp_path, tiny_model, blobs, names=("a.tif", "b.tif")):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(exist_ok=True)
    for name in names:
        tifffile.imwrite(inp / name, blobs[0])
    return inp, out, ["batch", "--model", str(tiny_model), "--input-dir", str(inp), "--output-dir", str(out),
                      "--device", "cpu"]


def test_batch_with_a_file_that_is_not_a_scheduler_writes_nothing(tmp_path, tiny_model, blobs, capsys):
    inp, out, argv = _good_batch(tmp_path, tiny_model, blobs)
    fake = tmp_path / "scheduler.json"
    fake.write_text("[1, 2, 3]")
    assert main([*argv, "--scheduler", str(fake)]) == 2
    assert "scheduler file" in error_line(capsys)
    assert not out.exists()


@pytest.mark.slow
def test_unreachable_scheduler_after_a_good_run_keeps_manifest_and_summary(tmp_path, tiny_model, blobs, capsys):
    inp, out, argv = _good_batch(tmp_path, tiny_model, blobs)
    assert main([*argv, "--workers", "0"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # a closed port: no need to wait 30 s
        assert main([*argv, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "could not connect" in error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*argv, "--workers", "0", "--skip-existing"]) == 0
    assert "skipped 2" in capsys.readouterr().out


# ----------------------------------------------------------------------------- names and paths


@pytest.mark.slow
@pytest.mark.parametrize("hostile", [b"caf\xe9.tif", b"a;b.tif", b"back\\slash.tif", b"new\nline.tif",
                                     "café;ü.tif".encode()])
def test_hostile_names_in_a_batch_round_trip_through_the_manifest(tmp_path, tiny_model, blobs, capsys, hostile):
    inp, out, argv = _good_batch(tmp_path, tiny_model, blobs, names=("plain.tif",))
    tifffile.imwrite(os.fsdecode(os.path.join(os.fsencode(inp), hostile)), blobs[0])
    assert main([*argv, "--workers", "0"]) == 0, capsys.readouterr().err
    text = (out / "manifest.csv").read_bytes().decode("utf-8")  # the manifest stays valid UTF-8
    assert text.count(",ok,") == 2
    assert main([*argv, "--workers", "0", "--skip-existing"]) == 0
    assert "ok 0, failed 0, skipped 2" in capsys.readouterr().out


def test_non_utf8_name_is_readable_in_the_manifest(tmp_path, tiny_model, blobs, capsys):
    inp, out, argv = _good_batch(tmp_path, tiny_model, blobs, names=())
    tifffile.imwrite(os.fsdecode(os.path.join(os.fsencode(inp), b"caf\xe9.tif")), blobs[0])
    assert main([*argv, "--workers", "0"]) == 0
    assert "caf\\xe9.tif,ok" in (out / "manifest.csv").read_text(encoding="utf-8")
    assert "caf\\xe9_labels.tif" in (out / "manifest.csv").read_text(encoding="utf-8")


def test_a_240_character_output_name_is_written(tmp_path, tiny_model, image, capsys):
    out = tmp_path / ("x" * 236 + ".tif")
    code = main(["predict", "--model", str(tiny_model), "--input", str(image), "--output", str(out),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image.name, out.name])


def test_an_output_name_over_the_file_system_limit_is_one_clear_line(tmp_path, tiny_model, image, capsys):
    code = main(["predict", "--model", str(tiny_model), "--input", str(image), "--output",
                 str(tmp_path / ("x" * 300 + ".tif"))])
    assert code == 2
    assert "file name too long" in error_line(capsys)


@pytest.mark.parametrize("pattern,message", [
    ("", "pattern is empty"),
    ("/tmp/*.tif", "absolute path"),
    ("../*.tif", "climbs out"),
    ("sub/../../*.tif", "climbs out"),
])
def test_bad_patterns_are_refused_with_the_reason(tmp_path, tiny_model, blobs, capsys, pattern, message):
    inp, out, argv = _good_batch(tmp_path, tiny_model, blobs)
    assert main([*argv, "--pattern", pattern]) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_fifo_as_input_is_named_a_fifo(tmp_path, tiny_model, capsys):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    code = main(["predict", "--model", str(tiny_model), "--input", str(fifo), "--output", str(tmp_path / "o.tif")])
    assert code == 2
    assert "FIFO" in error_line(capsys)
    assert main(["info", str(fifo)]) == 2 and "FIFO" in error_line(capsys)


def test_immutable_output_is_refused_naming_the_users_file(tmp_path, tiny_model, image, capsys):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"old")
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        code = main(["predict", "--model", str(tiny_model), "--input", str(image), "--output", str(out)])
        line = error_line(capsys)
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert code == 2
    assert str(out) in line and ".tmp-" not in line
    assert out.read_bytes() == b"old"


# ----------------------------------------------------------------------------- values and formats


def test_lzw_tiff_is_read(tmp_path, tiny_model, blobs, capsys):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, blobs[0], compression="lzw")
    code = main(["predict", "--model", str(tiny_model), "--input", str(path), "--output", str(tmp_path / "o.tif"),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.slow
def test_missing_codec_is_named(tmp_path, blobs):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, blobs[0], compression="lzw")
    code = ("import sys; sys.modules['imagecodecs'] = None\n"
            "from napari_seglab.cli import main\n"
            f"raise SystemExit(main(['evaluate', '--pred', {str(path)!r}, '--truth', {str(path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 2, proc.stderr
    assert "pip install imagecodecs" in one_error_line(proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("scale,dtype", [(1e-9, np.float32), (1e300, np.float64), (1e-300, np.float64)])
def test_extreme_intensity_units_segment_like_ordinary_ones(tmp_path, tiny_model, blobs, capsys, scale, dtype):
    img = blobs[0]
    tifffile.imwrite(tmp_path / "plain.tif", img)
    tifffile.imwrite(tmp_path / "scaled.tif", (img.astype(np.float64) * scale).astype(dtype))
    for name in ("plain", "scaled"):
        assert main(["predict", "--model", str(tiny_model), "--input", str(tmp_path / f"{name}.tif"),
                     "--output", str(tmp_path / f"{name}_labels.tif"), "--device", "cpu"]) == 0
    plain = tifffile.imread(tmp_path / "plain_labels.tif")
    scaled = tifffile.imread(tmp_path / "scaled_labels.tif")
    assert 0 < (plain > 0).mean() < 0.5  # the model finds the discs, not the whole image
    assert ((plain > 0) == (scaled > 0)).mean() > 0.99


def test_single_plane_stack_keeps_its_axes(tmp_path, tiny_model, blobs, capsys):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, blobs[0][None], metadata={"axes": "ZYX"})
    out = tmp_path / "labels.tif"
    probs = tmp_path / "p.tif"
    assert main(["predict", "--model", str(tiny_model), "--input", str(path), "--output", str(out),
                 "--probabilities", str(probs), "--device", "cpu"]) == 0
    assert tifffile.imread(out).shape == (1, *blobs[0].shape)
    assert tifffile.imread(probs).shape == (2, 1, *blobs[0].shape)


# ----------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("files,expected", [
    ((), "no model was saved"),
    (("last",), "latest model is in"),
    (("best", "last"), "best model so far is in"),
])
def test_ctrl_c_names_only_the_model_files_that_exist(image, scribbles, tmp_path, monkeypatch, capsys, files,
                                                      expected):
    import napari_seglab.core.train as train_module
    from napari_seglab.core.events import CheckpointSaved, EpochEnd

    best, last = tmp_path / "m.pt", tmp_path / "m.last.pt"

    def interrupted(*args, **kwargs):
        yield EpochEnd(epoch=1, epochs=2, train_loss=0.5, is_best=True)
        yield CheckpointSaved(str(best), 1, 0.5)
        for name in files:
            (best if name == "best" else last).write_bytes(b"model")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "iter_train", interrupted)
    code = main(["train", "--image", str(image), "--labels", str(scribbles), "--label-mode", "scribbles",
                 "--model-out", str(best), "--device", "cpu"])
    assert code == 130
    assert expected in capsys.readouterr().err


# ----------------------------------------------------------------------------- the CLI never ends in exit 1

NUMBERS = st.sampled_from(["0", "-1", "1", "31", "32", "33", "64", "1e400", "nan", "inf", "-inf", "-0", "0.5",
                           "1.5", str(2**64), str(-2**63), "1e-320", "", " ", "abc", "0x10", "١٢"])


@pytest.fixture(scope="module")
def odd_paths(tmp_path_factory, blobs):
    """Paths a user may give by mistake: missing, folder, FIFO, device, empty, garbage, a real image."""
    folder = tmp_path_factory.mktemp("odd")
    tifffile.imwrite(folder / "real.tif", blobs[0])
    (folder / "empty.tif").write_bytes(b"")
    (folder / "garbage.tif").write_bytes(b"II*\0garbage" * 20)
    os.mkfifo(folder / "fifo.tif")
    write_bomb(folder / "bomb.tif")
    return {"missing": str(folder / "nope.tif"), "folder": str(folder), "fifo": str(folder / "fifo.tif"),
            "device": "/dev/null", "empty": str(folder / "empty.tif"), "garbage": str(folder / "garbage.tif"),
            "bomb": str(folder / "bomb.tif"), "real": str(folder / "real.tif")}


@pytest.fixture
def stubbed(monkeypatch):
    """The long work replaced by a stub that says it was reached (exit 2 with 'reached')."""
    import napari_seglab.core.batch as batch_module
    import napari_seglab.core.predict as predict_module
    import napari_seglab.core.train as train_module
    from napari_seglab.core.errors import InputError

    def reached(*args, **kwargs):
        raise InputError("reached")
        yield  # pragma: no cover - a generator, like the real ones

    for module, name in ((train_module, "iter_train"), (predict_module, "iter_predict_image"),
                         (batch_module, "iter_run_batch")):
        monkeypatch.setattr(module, name, reached)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_option_value_or_odd_path_ends_in_exit_1(tmp_path, tiny_model, odd_paths, stubbed, capsys, data):
    path = st.sampled_from(sorted(odd_paths)).map(odd_paths.get)
    command = data.draw(st.sampled_from(["train", "predict", "batch", "evaluate", "export", "info"]))
    out = str(tmp_path / "out" / "o.tif") if data.draw(st.booleans()) else str(tmp_path / "o.tif")
    if command == "train":
        argv = ["train", "--image", data.draw(path), "--labels", data.draw(path), "--label-mode",
                data.draw(st.sampled_from(["scribbles", "instances", "classes", "x"])), "--model-out", out]
        options = ["--patch", "--batch-size", "--seed", "--val-fraction", "--time-limit", "--epochs", "--lr",
                   "--focal-gamma", "--steps-per-epoch"]
    elif command == "predict":
        argv = ["predict", "--model", data.draw(st.sampled_from([str(tiny_model), odd_paths["garbage"],
                                                                 odd_paths["fifo"], odd_paths["missing"]])),
                "--input", data.draw(path), "--output", out]
        options = ["--tile", "--overlap", "--score-threshold"]
    elif command == "batch":
        argv = ["batch", "--model", str(tiny_model), "--input-dir", data.draw(path), "--output-dir",
                str(tmp_path / "b"), "--pattern", data.draw(st.sampled_from(["*.tif", "", "/x/*.tif", "../*"]))]
        options = ["--workers", "--tile", "--overlap"]
    elif command == "evaluate":
        argv, options = ["evaluate", "--pred", data.draw(path), "--truth", data.draw(path)], []
    elif command == "export":
        argv = ["export", "--model", data.draw(st.sampled_from([odd_paths["garbage"], odd_paths["real"],
                                                                odd_paths["device"]])),
                "--format", "torchscript", "--out", out]
        options = []
    else:
        argv, options = ["info", data.draw(path)], []
    for option in data.draw(st.lists(st.sampled_from(options), unique=True, max_size=3)) if options else []:
        argv += [option, data.draw(NUMBERS)]
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, captured.err)
    if code == 2 and "usage:" not in captured.err:
        one_error_line(captured.err)


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["train", "--image", "{missing}", "--labels", "{missing}", "--label-mode", "scribbles", "--model-out", "{out}"],
    ["train", "--image", "{real}", "--labels", "{real}", "--label-mode", "scribbles", "--model-out",
     "{nofolder}"],
    ["predict", "--model", "{missing}", "--input", "{real}", "--output", "{out}"],
    ["predict", "--model", "{real}", "--input", "{missing}", "--output", "{out}"],
    ["predict", "--model", "{real}", "--input", "{real}", "--output", "{nofolder}"],
    ["batch", "--model", "{missing}", "--input-dir", "{folder}", "--output-dir", "{folder}/o"],
    ["batch", "--model", "{real}", "--input-dir", "{folder}", "--output-dir", "{real}/o"],
    ["export", "--model", "{missing}", "--format", "onnx", "--out", "{out}"],
    ["evaluate", "--pred", "{missing}", "--truth", "{real}"],
    ["info", "{missing}"],
])
def test_wrong_paths_are_reported_before_torch_is_imported(tmp_path, blobs, argv):
    """A wrong path is said at once, not after seconds of importing torch (issue 13)."""
    tifffile.imwrite(tmp_path / "real.tif", blobs[0])
    names = {"missing": tmp_path / "nope.tif", "out": tmp_path / "o.tif", "real": tmp_path / "real.tif",
             "nofolder": tmp_path / "no" / "o.tif", "folder": tmp_path}
    argv = [a.format(**names) for a in argv]
    code = ("import sys\nfrom napari_seglab.cli import main\n"
            f"code = main({argv!r})\nprint('torch' in sys.modules)\nraise SystemExit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr)
    assert proc.stdout.strip() == "False"
