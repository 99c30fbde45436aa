"""Every rule a setting declares is checked: the checks are read from the declarations, not listed by hand."""

import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.predict import BatchOptions, PredictOptions
from napari_seglab.core.settings import Setting, SettingError, check_fields, settings_of
from napari_seglab.core.train import TrainConfig

CLASSES = (TrainConfig, PredictOptions, BatchOptions)


def out_of_range(declared: Setting) -> list:
    """Values just past each declared bound."""
    step = 1 if declared.kind is int else 0.5
    values = []
    if declared.low is not None:
        values.append(declared.low - step if not declared.low_open else declared.low)
    if declared.high is not None:
        values.append(declared.high + step if not declared.high_open else declared.high)
    return [int(v) if declared.kind is int else float(v) for v in values]


RANGED = [(cls, name, value) for cls in CLASSES for name, declared in settings_of(cls).items()
          for value in out_of_range(declared)]


def test_the_ranges_under_test_include_those_once_left_unchecked():
    ranged = {(cls.__name__, name) for cls, name, _ in RANGED}
    assert {("TrainConfig", "weight_decay"), ("TrainConfig", "preview_every"), ("BatchOptions", "workers"),
            ("BatchOptions", "score_threshold"), ("PredictOptions", "tile")} <= ranged


@pytest.mark.parametrize(("cls", "name", "value"), RANGED,
                         ids=[f"{cls.__name__}.{name}={value}" for cls, name, value in RANGED])
def test_every_declared_range_refuses_a_value_out_of_it(cls, name, value):
    declared = settings_of(cls)[name]
    with pytest.raises(InputError) as error:
        cls(**{name: value}).check()
    assert str(error.value).startswith(declared.label)  # the message names the option
    if isinstance(error.value, SettingError):
        assert error.value.name == name
        flag = declared.flag if declared.flag is not None else "--" + name.replace("_", "-")
        assert (f"({flag})" in error.value.with_flag()) == bool(flag)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_declared_choice_and_flag_is_checked(cls):
    for name, declared in settings_of(cls).items():
        if declared.choices:
            wrong = "no-such-choice"
        elif declared.kind is bool:
            wrong = "yes"
        else:
            continue
        with pytest.raises(InputError):
            cls(**{name: wrong}).check()


def test_free_text_is_left_to_its_own_checks():
    # names and paths are refused by the registry and the file checks, in their own words
    assert not Setting("a path", "model file").checked
    assert Setting("a choice", "mode", choices=("a", "b")).checked
    assert Setting("a number", "count", int, low=0).checked
    assert Setting("a flag", "on", bool).checked


def test_defaults_pass_their_own_checks():
    for cls in CLASSES:
        check_fields(cls())
