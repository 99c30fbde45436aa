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

import pytest

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


@pytest.mark.slow
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


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the napari_seglab modules (and names) a source file imports."""
    import ast

    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {f"{module}.{alias.name}" for alias in node.names} | {module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("napari_seglab.")}


def test_core_packages_are_reached_through_their_public_face():
    """A stage package's private modules (``core/<stage>/_x.py``) are imported only inside that package."""
    core = PACKAGE_DIR / "core"
    offences = []
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rsplit(".", 1)[0]
        for name in _imported_modules(path, package):
            pieces = name.split(".")
            if len(pieces) > 3 and pieces[1] == "core" and pieces[3].startswith("_") \
                    and not (module + ".").startswith(".".join(pieces[:3]) + "."):
                offences.append(f"{path.relative_to(core.parent)} imports {name}")
    assert offences == []


def test_every_stage_package_lists_what_it_exports():
    import importlib

    for path in sorted((PACKAGE_DIR / "core").glob("*/__init__.py")):
        package = importlib.import_module(f"napari_seglab.core.{path.parent.name}")
        exported = getattr(package, "__all__", None)
        assert exported, f"{package.__name__} has no __all__"
        missing = [name for name in exported if not hasattr(package, name)]
        assert missing == [], f"{package.__name__}.__all__ names what it lacks: {missing}"
