"""TrainConfig declared once: metadata feeds argparse, one check for every caller, a frozen resolved form."""

import dataclasses

import numpy as np
import pytest
from painted import discs as painted_discs

from napari_seglab.cli import build_parser, main
from napari_seglab.core.errors import InputError
from napari_seglab.core.models import get_family
from napari_seglab.core.settings import SettingError, field_default, settings_of
from napari_seglab.core.train import (
    DENSE_BATCH,
    DENSE_PATCH,
    SPARSE_BATCH,
    SPARSE_PATCH,
    ResolvedTrainConfig,
    TrainConfig,
)

SETTINGS = settings_of(TrainConfig)


def train_options() -> dict:
    """``seglab train``'s argparse actions by destination."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["train"]._actions}


@pytest.mark.parametrize("name", ["patch", "batch_size", "lr", "time_limit", "val_fraction", "instance_head",
                                  "preset", "threads"])
def test_cli_help_is_the_declared_help(name):
    action = train_options()[name]
    setting = SETTINGS[name]
    assert action.help.startswith(setting.help)
    if setting.auto:
        assert f"(default: {setting.auto})" in action.help
    assert action.type is (setting.kind if setting.kind in (int, float) else None)
    assert action.default == field_default(TrainConfig, name)  # None = "auto": the core decides


def test_every_cli_option_of_train_is_a_declared_setting():
    options = train_options()
    declared = {name for name, s in SETTINGS.items() if s.flag != ""}
    front_only = {"image", "labels", "boxes", "diameter", "help", "debug", "scene", "channel", "axes"}  # reading
    assert set(options) - front_only == declared
    assert options["read_255_as_foreground"].option_strings == ["--mask-255"]


def test_preset_help_quotes_the_registry_step_times():
    from napari_seglab.core.models import PRESETS

    for preset in PRESETS.values():
        assert f"{preset.cpu_step_s:.2f} s per step" in SETTINGS["preset"].help
    assert set(SETTINGS["preset"].choices) == set(PRESETS)


@pytest.mark.parametrize("name,value,flag", [
    ("lr", 2.0, "--lr"), ("time_limit", float("nan"), "--time-limit"), ("seed", -1, "--seed"),
    ("val_fraction", 1.5, "--val-fraction"), ("patch", 100, "--patch"), ("bf16", "maybe", "--bf16"),
    ("instance_head", "stardist", "--instance-head"),
])
def test_python_and_cli_callers_get_the_same_error(tmp_path, capsys, name, value, flag):
    with pytest.raises(SettingError) as python_error:
        TrainConfig(label_mode="instances", **{name: value}).check()
    image, labels = painted_discs()
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    code = main(["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "--label-mode", "instances", "--model-out", str(tmp_path / "m.pt"), flag, str(value)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line == f"seglab: error: {python_error.value.with_flag()}"
    assert str(python_error.value).replace(SETTINGS[name].label, "", 1) in line  # the same words, with the flag
    assert not (tmp_path / "m.pt").exists()


def test_resolve_decides_the_defaults_per_device_and_freezes_them():
    config = TrainConfig(label_mode="scribbles")
    before = dataclasses.asdict(config)
    cpu, gpu = config.resolve("cpu"), config.resolve("cuda")
    assert dataclasses.asdict(config) == before  # the caller's config is not changed
    assert (cpu.patch, gpu.patch) == (SPARSE_PATCH["cpu"], SPARSE_PATCH["cuda"])
    assert cpu.batch_size == SPARSE_BATCH and cpu.lr == 3e-3 and cpu.time_limit == 120
    assert (cpu.preset, gpu.preset) == ("fast", "accurate") and cpu.encoder is None
    dense = TrainConfig(label_mode="instances", init=None).resolve("cpu")
    assert (dense.patch, dense.batch_size, dense.instance_head) == (DENSE_PATCH["cpu"], DENSE_BATCH, "flows")
    assert TrainConfig(label_mode="objects").resolve("cpu").instance_head == "boundary"
    # the learning rate is the architecture's: the light Mask R-CNN on a CPU, ResNet-50 on a GPU
    assert TrainConfig(family="maskrcnn", label_mode="instances").resolve("cpu").lr == 3e-4
    assert TrainConfig(family="maskrcnn", label_mode="instances").resolve("cuda").lr == 1e-4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.patch = 32
    assert isinstance(cpu, ResolvedTrainConfig) and cpu.resolve("cuda") is cpu
    # what the user chose stays as chosen; registry spellings are normalised
    chosen = TrainConfig(family="UNET", arch="fpn", encoder="resnet18", patch=96, batch_size=3, lr=1e-2)
    assert (lambda r: (r.family, r.arch, r.patch, r.batch_size, r.lr, r.preset))(chosen.resolve("cuda")) == \
        ("unet", "FPN", 96, 3, 1e-2, None)


@pytest.mark.parametrize("family, cpu_arch, gpu_arch", [
    ("fcn", "fcn_resnet18", "fcn_resnet50"),
    ("maskrcnn", "maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn"),
    ("fasterrcnn", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet18_fpn"),
])
def test_a_fresh_model_gets_the_light_architecture_on_a_cpu_and_the_heavy_one_on_a_gpu(family, cpu_arch, gpu_arch):
    config = TrainConfig(family=family, label_mode="instances")
    assert (config.resolve("cpu").arch, config.resolve("cuda").arch) == (cpu_arch, gpu_arch)
    heavy = next(a for a in get_family(family).archs if "resnet50" in a)
    assert TrainConfig(family=family, label_mode="instances", arch=heavy).resolve("cpu").arch == heavy  # a choice stays


def test_resolve_refuses_what_check_refuses():
    with pytest.raises(InputError, match="preset or an encoder"):
        TrainConfig(preset="fast", encoder="resnet18").resolve("cpu")
    with pytest.raises(InputError, match="unknown encoder"):
        TrainConfig(encoder="resnet999").resolve("cpu")
    with pytest.raises(InputError, match="registry"):
        TrainConfig(encoder="tu-../../x").check()


@pytest.mark.slow
def test_train_checks_a_resolved_config_no_second_time(monkeypatch, tmp_path):
    from napari_seglab.core.events import drive
    from napari_seglab.core.train import _config as config_module
    from napari_seglab.core.train import iter_train

    image, labels = painted_discs()
    resolved = TrainConfig(label_mode="instances", encoder="resnet18", epochs=1, steps_per_epoch=1, patch=64,
                           batch_size=2, bf16="off", threads=1, model_out=str(tmp_path / "m.pt")).resolve("cpu")
    calls = []
    original = config_module.TrainConfig._check
    monkeypatch.setattr(config_module.TrainConfig, "_check", lambda self: calls.append(1) or original(self))
    result = drive(iter_train([image], [labels], resolved))
    assert calls == [] and result.steps == 1 and (tmp_path / "m.pt").is_file()
    assert result.checkpoint.meta["training"]["config"]["patch"] == 64


def test_cli_checks_the_settings_and_the_model_names_once(monkeypatch, tmp_path, capsys):
    import tifffile

    import napari_seglab.core.models as models
    import napari_seglab.core.train as core_train
    from napari_seglab.core.models import Checkpoint
    from napari_seglab.core.train import _config as config_module

    image, labels = painted_discs()
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels.astype(np.uint16))
    checks, specs, seen = [], [], {}
    original_check, original_spec = config_module.TrainConfig._check, models.check_spec
    monkeypatch.setattr(config_module.TrainConfig, "_check", lambda self, *a: checks.append(1) or original_check(self, *a))
    monkeypatch.setattr(models, "check_spec", lambda spec, *a: specs.append(1) or original_spec(spec, *a))

    def fake_train(images, labels, config, **kwargs):
        seen["config"] = config
        yield from ()
        return core_train.TrainResult(checkpoint=Checkpoint(meta={"metrics": {}}, state_dict={}), path=None)

    monkeypatch.setattr(core_train, "iter_train", fake_train)
    code = main(["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "--label-mode", "instances", "--model-out", str(tmp_path / "m.pt"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert checks == [1] and specs == [1]
    assert isinstance(seen["config"], ResolvedTrainConfig) and seen["config"].patch == DENSE_PATCH["cpu"]


def test_the_learning_rates_are_declared_by_the_families_alone():
    from napari_seglab.core.models import CARDS, get_family
    from napari_seglab.core.train import _config as config

    help_text = SETTINGS["lr"].text
    for card in CARDS:
        assert config.default_lr(card.name) == card.lr == get_family(card.name).lr
        assert config.default_lr(card.name, fine_tuning=True) == card.lr_finetune
        said = help_text[help_text.index(card.name):].split(";")[0]  # "unet, fcn 3e-3 from scratch, ..."
        assert config._sci(card.lr) in said and config._sci(card.lr_finetune) in said


def test_family_and_architecture_help_list_the_catalogue():
    from napari_seglab.core.models import CARDS

    for card in CARDS:
        assert f"{card.name}: {', '.join(card.archs)}" in SETTINGS["arch"].help
        assert (card.name in SETTINGS["family"].help) == card.kind.boxes  # the box detectors are named
        assert card.name in SETTINGS["family"].metavar
    assert SETTINGS["instance_head"].choices == CARDS[0].heads


@pytest.mark.parametrize(("args", "given", "objects", "scribbles"),
                         [([], None, True, True), (["--self-training"], True, True, True),
                          (["--no-self-training"], False, False, False)])
def test_self_training_is_auto_on_or_off_from_the_command_line(args, given, objects, scribbles):
    from napari_seglab.cli.common import options_from_args

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    ns = sub.parse_args(["--image", "image.tif", "--model-out", "m.pt", *args])
    assert ns.self_training is given
    config = options_from_args(ns, TrainConfig, ["self_training"])
    assert dataclasses.replace(config, label_mode="objects").resolve("cpu").self_training is objects
    assert dataclasses.replace(config, label_mode="scribbles").resolve("cpu").self_training is scribbles
