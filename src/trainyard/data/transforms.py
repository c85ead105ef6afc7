"""Transforms by name: ``[{RandomRotation: {degrees: 15}}, ...]`` resolved against torchvision.transforms.v2."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from trainyard.config import suggest
from trainyard.errors import ConfigError


def v2():
    from torchvision.transforms import v2 as module

    return module


def available() -> dict[str, type]:
    """Every transform class that torchvision.transforms.v2 exports, by name."""
    module = v2()
    names = {}
    for name in dir(module):
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, module.Transform) and not name.startswith("_") and name != "Transform":
            names[name] = obj
    return names


def signature(cls: type) -> str:
    try:
        return f"{cls.__name__}{inspect.signature(cls)}"
    except (TypeError, ValueError):
        return cls.__name__


def _convert_arg(value: Any) -> Any:
    """YAML has no tuples or dtypes: map lists to tuples and dtype names to torch dtypes."""
    if isinstance(value, list):
        return tuple(_convert_arg(v) for v in value)
    if isinstance(value, str) and value.startswith("torch.") and isinstance(getattr(torch, value[6:], None), torch.dtype):
        return getattr(torch, value[6:])
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype) and value in ("float32", "float16", "bfloat16", "uint8", "float64"):
        return getattr(torch, value)
    return value


def build_one(entry: Any, key: str) -> Any:
    """One ``{Name: {args}}`` (or plain ``Name``) entry to a transform instance."""
    if isinstance(entry, str):
        name, args = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, args = next(iter(entry.items()))
        args = {} if args is None else args
    else:
        raise ConfigError(f"{key}: each entry must be a transform name or {{Name: {{arg: value}}}}, got {entry!r}")
    table = available()
    if name not in table:
        raise ConfigError(f"{key}: unknown transform {name!r}{suggest(str(name), table) or '; run `trainyard transforms` for the list'}")
    cls = table[name]
    if not isinstance(args, dict):
        raise ConfigError(f"{key}: arguments of {name} must be a mapping, got {args!r}; signature: {signature(cls)}")
    try:
        return cls(**{k: _convert_arg(v) for k, v in args.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {name}({', '.join(f'{k}={v!r}' for k, v in args.items())}): {exc}; signature: {signature(cls)}") from None


def build_pipeline(entries: Sequence[Any] | None, key: str, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Any:
    """Compose the listed transforms, then add what the dataset needs unless the list already does it:
    conversion to float32 in [0, 1], and normalisation with the dataset's mean and std."""
    module = v2()
    steps = [build_one(e, f"{key}[{i}]") for i, e in enumerate(entries or [])]
    if not any(isinstance(s, module.ToDtype) for s in steps):
        steps.append(module.ToDtype(torch.float32, scale=True))
    if mean is not None and std is not None and not any(isinstance(s, module.Normalize) for s in steps):
        steps.append(module.Normalize(mean=list(mean), std=list(std)))
    return module.Compose(steps)
