"""Lazy public faces: a name is imported from its module on first read, and then kept."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_lazy_name_loads_its_module_on_first_read():
    code = ("import sys\nimport napari_seglab.core.predict as p\n"
            "before = 'napari_seglab.core.predict._stock' in sys.modules\n"
            "p.STOCK\nprint(before, 'napari_seglab.core.predict._stock' in sys.modules, 'STOCK' in vars(p))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True", "True"]


@pytest.mark.parametrize("package", ["models", "predict", "train"])
def test_a_lazy_face_lists_its_names_and_refuses_others(package):
    face = importlib.import_module(f"napari_seglab.core.{package}")
    assert set(face.__all__) <= set(dir(face))
    with pytest.raises(AttributeError, match="no_such_name"):
        face.no_such_name  # noqa: B018
