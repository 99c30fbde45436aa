"""The core and the CLI never load the GUI stack; the widgets say how to get it when it is absent.

import-linter (``.importlinter``, run by ``make lint``) checks the same wall
statically, from the import statements. This test checks what an import
really loads, in a fresh interpreter: it would also catch a GUI package
loaded through a third-party library, or by ``importlib`` with a computed
name, which a static reading cannot see.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import napari_seglab

GUI_PACKAGES = ("napari", "qtpy", "magicgui", "superqt", "vispy", "PyQt5", "PyQt6", "PySide2", "PySide6")
PACKAGE_DIR = Path(napari_seglab.__file__).resolve().parent

# Imports every module of napari_seglab.core (found by pkgutil, so new modules are covered) and
# the headless entry points, one by one, and names the first module after which a GUI package
# is in sys.modules. Prints a JSON report.
CHECK = """
import importlib, json, pkgutil, sys
gui_packages = set(sys.argv[1].split(","))
def gui_loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & gui_packages)
import napari_seglab, napari_seglab.core
names = ["napari_seglab", "napari_seglab.core"]
names += [info.name for info in pkgutil.walk_packages(napari_seglab.core.__path__, "napari_seglab.core.")]
names += ["napari_seglab.cli", "napari_seglab.__main__", "napari_seglab._sample_data", "napari_seglab._colors"]
culprits = {}
for name in names:
    before = set(gui_loaded())
    importlib.import_module(name)
    new = sorted(set(gui_loaded()) - before)
    if new:
        culprits[name] = new
print(json.dumps({"imported": names, "culprits": culprits, "gui": gui_loaded()}))
"""


def run_check() -> dict:
    result = subprocess.run([sys.executable, "-c", CHECK, ",".join(GUI_PACKAGES)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def core_modules_on_disk() -> set[str]:
    """Every module file of napari_seglab.core, listed without pkgutil (so the check's discovery is checked)."""
    core = PACKAGE_DIR / "core"
    names = set()
    for path in core.rglob("*.py"):
        parts = path.relative_to(core).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(("napari_seglab", "core", *parts)))
    return names


def test_core_and_cli_load_no_gui_package():
    report = run_check()
    assert report["culprits"] == {}, f"importing these loaded GUI packages: {report['culprits']}"
    assert report["gui"] == []
    missed = core_modules_on_disk() - set(report["imported"])
    assert not missed, f"the check did not import {sorted(missed)}"
    assert {"napari_seglab.cli", "napari_seglab.core.train", "napari_seglab.core.batch"} <= set(report["imported"])


def test_widgets_without_napari_name_the_extra():
    # sys.modules[name] = None makes both find_spec and import see the package as absent
    code = "import sys\nsys.modules['napari'] = None\nimport napari_seglab._widgets.train\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and 'pip install "napari-seglab[napari]"' in last, last
