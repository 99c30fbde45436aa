"""The README's Python example runs as written (with a training budget of two steps instead of 60 s)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_example_runs(tmp_path, monkeypatch):
    code = _python_snippet()
    budget = "time_limit=60, epochs=None"
    assert budget in code  # the test shortens exactly this budget
    code = code.replace(budget, "time_limit=None, epochs=1, steps_per_epoch=2, encoder='resnet18', patch=64")
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    printed = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md (Python)", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "m.pt").is_file()
    assert namespace["prediction"].labels.shape == (256, 512)
    assert "TrainStep" in printed.getvalue() and "val_dice" in printed.getvalue()
