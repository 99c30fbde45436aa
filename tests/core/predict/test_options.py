"""Predict and batch settings declared once: the CLI's options, the core's checks and the docks' tooltips."""

import numpy as np
import pytest
import tifffile

from napari_seglab.cli import build_parser, main
from napari_seglab.core.events import drive
from napari_seglab.core.predict import BatchOptions, PredictOptions, iter_predict_image, load_model
from napari_seglab.core.settings import SettingError, settings_of


def subparser(name):
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == name)[1]


@pytest.mark.parametrize(("command", "cls"), [("predict", PredictOptions), ("batch", BatchOptions)])
def test_cli_options_are_the_declared_settings(command, cls):
    actions = {a.dest: a for a in subparser(command)._actions}
    for name, declared in settings_of(cls).items():
        assert name in actions, f"seglab {command} lacks the option of {name}"
        assert actions[name].help.startswith(declared.help)
        # the field's name as an option, or the flag its Setting names (``volume``: --3d)
        assert actions[name].option_strings == [declared.flag or "--" + name.replace("_", "-")]


@pytest.mark.parametrize(("option", "value", "keyword"), [
    ("--overlap", "1.0", {"overlap": 1.0}),
    ("--tile", "5", {"tile": 5}),
    ("--score-threshold", "1.5", {"score_threshold": 1.5}),
])
def test_python_and_the_cli_refuse_a_bad_prediction_setting_alike(tiny_model, blobs, tmp_path, capsys, option,
                                                                   value, keyword):
    lm = load_model(tiny_model, "cpu")
    with pytest.raises(Exception) as python_error:
        drive(iter_predict_image(lm, blobs[0], **keyword))
    message = str(python_error.value)
    tifffile.imwrite(tmp_path / "img.tif", blobs[0])
    code = main(["predict", "--model", str(tiny_model), "--input", str(tmp_path / "img.tif"), "--output",
                 str(tmp_path / "out.tif"), option, value])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out.tif").exists()
    # the same words, the CLI naming the option as well
    core_words = message.split(" must ")[1]
    assert core_words in err and err.count("\n") == 1


def test_batch_refuses_bad_settings_from_python_and_the_cli(tiny_model, blobs, tmp_path, capsys):
    from napari_seglab.core.api import run_batch

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", blobs[0])
    with pytest.raises(SettingError, match="workers must be a whole number from 0"):
        run_batch(str(tiny_model), str(tmp_path / "in"), str(tmp_path / "out"), workers=-1)
    code = main(["batch", "--model", str(tiny_model), "--input-dir", str(tmp_path / "in"), "--output-dir",
                 str(tmp_path / "out"), "--workers", "-1"])
    assert code == 2 and "workers (--workers) must be a whole number from 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_refuses_a_bad_score_threshold_as_predict_does():
    with pytest.raises(SettingError, match="score threshold must be") as batch_error:
        BatchOptions(score_threshold=2.0).check()
    with pytest.raises(SettingError) as predict_error:
        PredictOptions(score_threshold=2.0).check()
    assert str(batch_error.value) == str(predict_error.value)


def test_options_check_their_values():
    assert PredictOptions().check() == PredictOptions()
    with pytest.raises(SettingError, match="true or false"):
        PredictOptions(tta="yes").check()
    np.testing.assert_equal(BatchOptions(tile=64, workers=0).check().tile, 64)
