"""Settings declared once: a :class:`Setting` per dataclass field, read by the core, the CLI and the docks.

A settings dataclass (see :class:`~napari_seglab.core.train._config.TrainConfig`) declares each field
with :func:`setting`; its metadata holds the help text, the range or choices,
what "auto" (None) means, the unit and the command-line flag. The CLI builds
its argparse options from it, the docks their tooltips and ranges, and the
core's checks refuse a value with a :class:`SettingError` that names the
setting and its rule, the same words for every caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Setting:
    """What a front needs to offer one setting: help, range or choices, "auto" meaning, unit, flag.

    ``low``/``high`` bound numbers (open ends with ``low_open``/``high_open``);
    ``step`` asks for a multiple; ``auto`` says what None ("auto") means;
    ``flag`` is the ``seglab train`` option ("" = none) and ``label`` the
    name used in messages and in the dock. ``used_by``: which model families
    use the setting, a test on the family's card (None: every family), and
    ``used_by_text`` the same in words; :func:`check_used` refuses a value
    other than the default for a family that would ignore it.
    """

    help: str
    label: str
    kind: type = str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    step: int | None = None
    choices: tuple = ()
    auto: str = ""
    unit: str = ""
    flag: str | None = None
    metavar: str | None = None
    used_by: Callable[[Any], bool] | None = None
    used_by_text: str = ""

    @property
    def rule(self) -> str:
        """The allowed values in words ("a whole number from 1 to 4096")."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind is bool:
            return "true or false"
        what = f"a multiple of {self.step}" if self.step else "a whole number" if self.kind is int else "a finite number"
        unit = f" {self.unit}" if self.unit else ""
        low, high = _shown(self.low), _shown(self.high)
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"{what} from {low} to {high}{unit}"
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}{unit}"
        if self.low is not None:
            return f"{what} {'above' if self.low_open else 'of at least'} {low}{unit}"
        return what

    @property
    def checked(self) -> bool:
        """True when the declaration states a rule a value can break: a range, choices, a number or a flag.

        Free text (names, paths) has no rule here; the registry, the file checks and the label
        modes refuse a bad one in their own words.
        """
        return bool(self.choices) or self.kind is not str

    @property
    def text(self) -> str:
        """Help text with what "auto" means: the ``--help`` line and the dock's tooltip."""
        return self.help + (f" (auto: {self.auto})" if self.auto else "")

    def accepts(self, value: Any) -> bool:
        """True when ``value`` (not None) is allowed."""
        if self.choices:
            return isinstance(value, str) and value in self.choices
        if self.kind is str:
            return isinstance(value, str)
        if self.kind is bool:
            return isinstance(value, (bool, np.bool_))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            return False
        if self.kind is int and not isinstance(value, (int, np.integer)):
            return False
        if not math.isfinite(value) or (self.step and value % self.step):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _shown(value: float | None) -> str:
    """A bound in words: whole numbers without exponent, 2**63 - 1 by its name."""
    if value is None:
        return ""
    if value == 2**63 - 1:
        return "2**63 - 1"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e12 else f"{value:g}"


class SettingError(InputError):
    """A setting out of its range: says which, the rule, and the value given."""

    def __init__(self, setting: Setting, value: Any, name: str | None = None):
        self.setting, self.value, self.name = setting, value, name
        shown = repr(value) if isinstance(value, str) else str(value)[:40]
        super().__init__(f"{setting.label} must be {setting.rule}; got {shown}")

    def with_flag(self) -> str:
        """The same message naming the command-line option too ("time limit (--time-limit) must be ...")."""
        flag = self.setting.flag
        if flag is None:
            flag = f"--{self.name.replace('_', '-')}" if self.name else ""
        return str(self).replace(self.setting.label, f"{self.setting.label} ({flag})", 1) if flag else str(self)


class UnusedSettingError(SettingError):
    """A setting given for a model family that does not use it (it would silently do nothing)."""

    def __init__(self, setting: Setting, value: Any, name: str, family_label: str):
        self.setting, self.value, self.name = setting, value, name
        where = f"; it applies to {setting.used_by_text}" if setting.used_by_text else ""
        InputError.__init__(self, f"{setting.label} is not used by {family_label} models{where}")


def check_used(obj, family, family_label: str | None = None) -> None:
    """Refuse every setting of ``obj`` set away from its default that ``family`` (a family card) does not use.

    Read from the declarations (:attr:`Setting.used_by`), so each option is used or refused for every
    family without a list per family. Raises :class:`UnusedSettingError` naming the first such setting.
    """
    label = family_label or getattr(family, "label", str(family))
    for name, declaration in settings_of(type(obj)).items():
        if declaration.used_by is None or declaration.used_by(family):
            continue
        value = getattr(obj, name)
        if value is not None and value != field_default(type(obj), name):
            raise UnusedSettingError(declaration, value, name, label)


def setting(default: Any = None, **meta) -> Any:
    """A dataclass field with a :class:`Setting` in its metadata."""
    return field(default=default, metadata={"setting": Setting(**meta)})


def settings_of(cls) -> dict[str, Setting]:
    """``{field name: Setting}`` of a settings dataclass, in declaration order."""
    return {f.name: f.metadata["setting"] for f in fields(cls) if "setting" in f.metadata}


def check_fields(obj) -> None:
    """Every field of settings dataclass ``obj`` whose Setting states a rule (:attr:`Setting.checked`).

    What is checked is read from the declarations, so a new setting with a range is checked
    without a list to update. None passes where None is the field's default ("auto"); the first
    value out of its rule, in declaration order, raises a :class:`SettingError` naming the setting.
    """
    declared = settings_of(type(obj))
    for name, declaration in declared.items():
        if not declaration.checked:
            continue
        value = getattr(obj, name)
        if value is None and field_default(type(obj), name) is None:
            continue
        if not declaration.accepts(value):
            raise SettingError(declaration, value, name)


def field_default(cls, name: str) -> Any:
    """The declared default of field ``name`` of dataclass ``cls``."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()
