"""Optional packages (the extras in pyproject.toml): imported where they are used; missing, one line naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from trainyard.errors import TrainyardError


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """``module`` imported, or a TrainyardError: ``<needed_for> needs the <package> package; install it with: pip install 'trainyard[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != package:  # the package is there but broken: its own error
            raise
        raise TrainyardError(f"{needed_for} needs the {package} package; install it with: pip install 'trainyard[{extra}]'") from None
