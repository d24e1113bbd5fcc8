"""Lazy package exports (PEP 562): a package lists which submodule defines each public name,
and a name's module is imported on first use. Importing the package, or a light submodule
of it, then imports no torch (what Snakemake's main process relies on)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any],
                 modules: Mapping[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose globals are ``namespace``;
    ``modules`` maps a submodule to the public names it defines."""
    where = {name: module for module, names in modules.items() for name in names}
    names = sorted(where)

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return names, getattr_, dir_
