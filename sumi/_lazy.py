"""Lazy package exports (PEP 562): a package's public names are imported on first use, so that
importing one light module of the package (``sumi.data.encoding`` in ``sumi data prepare``'s worker
processes) does not import torch and the model with it (about 1 s and 200 MB per process)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each public
    name to the module that defines it (the name itself when it is a submodule); any other
    submodule is imported on first attribute access too, as an eager ``__init__`` made it available."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is not None:
            imported = importlib.import_module(module)
            value = imported if module == f"{package}.{name}" else getattr(imported, name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__

