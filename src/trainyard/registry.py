"""One kind of registry for every family (strategies, datasets, models, tasks, trackers, callbacks, ...).

A registry maps built-in names to ``"module:object"`` strings, imported only when used, and resolves
anything else that looks like an import path (``"nets:MyNet"``, ``"pkg.module:build"``) the way
``python -m`` would: from the working directory, then ``PYTHONPATH``. Every error is one line that names
the config key, says what went wrong and lists what is known (with the closest name for a typo).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from trainyard.errors import ConfigError


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not found:  # case-insensitive second try: mseloss -> MSELoss
        lower = {c.lower(): c for c in choices}
        found = [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)]
    return found


def hint(name: str, choices: Iterable[str]) -> str:
    found = closest(name, choices)
    return f"; did you mean {' or '.join(found)}?" if found else ""


def is_import_path(spec: Any) -> bool:
    return isinstance(spec, str) and ":" in spec and not spec.startswith(":") and not spec.endswith(":")


def _ensure_cwd_on_path() -> None:
    """``python -m`` puts the working directory first on sys.path; a console script does not. Do as -m does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_object(spec: str, key: str) -> Any:
    """``"package.module:attr"`` (``attr`` may be dotted: ``Outer.inner``), imported; errors name ``key``."""
    if not is_import_path(spec):
        raise ConfigError(f"{key}={spec}: not an import path; expected package.module:name")
    module_name, attr = spec.split(":", 1)
    _ensure_cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the user's module raised while importing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = (
            ""
            if not isinstance(exc, ModuleNotFoundError)
            else f"; modules are found from the working directory ({os.getcwd()}) and PYTHONPATH"
        )
        raise ConfigError(f"{key}={spec}: cannot import {module_name} ({type(exc).__name__}: {first}){where}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"{key}={spec}: {getattr(obj, '__name__', module_name)} has no {part!r}{hint(part, names)}")
        obj = getattr(obj, part)
    return obj


def qualified_name(obj: Any) -> str | None:
    """``"module:QualName"`` for an importable class or function (None for lambdas, locals, ``__main__``)."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qual or "<" in qual:
        return None
    return f"{module}:{qual}"


NO_DEFAULT = object()


@dataclass(frozen=True)
class Entry:
    target: Any  # "module:object", or the object itself
    help: str = ""


class Registry(MutableMapping):
    """Built-in names of one family, plus import paths. ``key`` is the config key errors name (``model.name``).

    A mapping of name -> ``"module:object"`` (or the object), so a test or a plugin can add an entry
    (``REGISTRY["mine"] = "pkg.mod:obj"``) the way it would to a dict."""

    def __init__(
        self, family: str, key: str, *, fallback: Callable[[str], Any] | None = None, fallback_names: Callable[[], list[str]] | None = None
    ):
        self.family = family
        self.key = key
        self._entries: dict[str, Entry] = {}
        self._fallback = fallback  # a second source of names (torch.optim classes, torchvision models, ...)
        self._fallback_names = fallback_names

    def register(self, name: str, target: Any, help: str = "") -> None:
        self._entries[name] = Entry(target, help)

    # the mapping: name -> target
    def __getitem__(self, name: str) -> Any:
        return self._entries[name].target

    def __setitem__(self, name: str, target: Any) -> None:
        self.register(name, target)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def help(self, name: str) -> str:
        return self._entries[name].help

    def known(self) -> list[str]:
        return self.names() + (self._fallback_names() if self._fallback_names else [])

    def get(self, spec: Any, default: Any = NO_DEFAULT, *, key: str | None = None) -> Any:  # type: ignore[override]
        """With a default, a plain mapping's ``get`` (the registered target, or the default: what
        ``monkeypatch.setitem`` relies on). Without one, :meth:`resolve`."""
        if default is not NO_DEFAULT:
            return self[spec] if spec in self._entries else default
        return self.resolve(spec, key)

    def resolve(self, spec: Any, key: str | None = None) -> Any:
        """The object a built-in name, a fallback name or an import path stands for."""
        key = key or self.key
        if not isinstance(spec, str):
            return spec  # already an object (the Python API passes classes and instances)
        if spec in self._entries:
            target = self._entries[spec].target
            return import_object(target, key) if isinstance(target, str) else target
        if is_import_path(spec):
            return import_object(spec, key)
        if self._fallback is not None:
            found = self._fallback(spec)
            if found is not None:
                return found
        listed = ", ".join(self.names())
        more = f", {self.fallback_help}" if self._fallback_names else ""
        raise ConfigError(
            f"{key}={spec}: unknown {self.family}; built-ins: {listed}{more}, or an import path "
            f"package.module:name{hint(spec, self.known())}"
        )

    fallback_help = "or a name from torch"


def signature_text(factory: Callable) -> str:
    import inspect

    try:
        shown = inspect.signature(factory).replace(return_annotation=inspect.Signature.empty)  # no "-> None"
        return f"{getattr(factory, '__name__', type(factory).__name__)}{shown}"
    except (TypeError, ValueError):
        return getattr(factory, "__name__", repr(factory))


def call_with(factory: Callable, key: str, args: dict | None = None, facts: dict | None = None, positional: tuple = ()) -> Any:
    """``factory(*positional, **args, **the facts it names)``: the user's ``args`` as given, plus the facts
    (``num_classes``, ``in_channels``, ...) that its signature asks for by name and ``args`` leaves unset.
    Arguments it rejects, or required ones nobody gives, are one line naming ``key`` and the signature."""
    import inspect

    args = dict(args or {})
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        params = None
    if params is not None:
        params = params[len(positional) :]
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        named = {p.name for p in params if p.kind in by_name}
        unknown = [a for a in args if a not in named and not takes_any]
        if unknown:
            raise ConfigError(
                f"{key}: {signature_text(factory)} takes no argument {', '.join(map(repr, unknown))}{hint(unknown[0], named)}"
            )
        bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()  # what a partial already says wins
        for name, value in (facts or {}).items():
            if name in named and name not in args and name not in bound and value is not None:
                args[name] = value
        missing = [p.name for p in params if p.kind in by_name and p.default is inspect.Parameter.empty and p.name not in args]
        if missing:
            given = ", ".join(k for k, v in (facts or {}).items() if v is not None) or "nothing"
            raise ConfigError(
                f"{key}: {signature_text(factory)} needs {', '.join(map(repr, missing))}: set it in the args (the data gives {given})"
            )
    try:
        return factory(*positional, **args)
    except TypeError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "argument" in text and params is None:  # a signature we could not read beforehand
            raise ConfigError(f"{key}: {signature_text(factory)} rejects {args}: {text}") from None
        raise
