"""Optional packages (the extras in pyproject.toml): imported where they are used; missing, one line naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from trainyard.errors import TrainyardError


def require(module: str, extra: str, needed_for: str, package: str | None = None) -> ModuleType:
    """``module`` imported, or a TrainyardError: ``<needed_for> needs <package>; install it with: pip install 'trainyard[<extra>]'``
    (``package``: the name pip knows, when it is not the module's)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:  # the package is there but broken: its own error
            raise
        raise TrainyardError(f"{needed_for} needs {package or top}; install it with: pip install 'trainyard[{extra}]'") from None
