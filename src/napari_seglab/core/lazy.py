"""Public faces that import their heavy modules when a name is first read (PEP 562).

A stage package whose modules need torch keeps its torch-free names (settings, the family
catalogue) imported at once and lists the others here, by module. ``import
napari_seglab.core.models`` then loads only the catalogue, so the command line builds its
options, and answers ``--help``, without loading torch (seconds on a laptop).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_names(package: str, table: Mapping[str, Sequence[str]]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``table[module]`` comes from
    ``package.module``, imported on the first read of one of its names and then kept on the package.
    """
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str):
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__


def lazy_all(table: Mapping[str, Sequence[str]]) -> list[str]:
    """The names of ``table``, for the face's ``__all__``."""
    return [name for names in table.values() for name in names]
