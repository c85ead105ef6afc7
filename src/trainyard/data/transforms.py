"""Transforms by name: ``[{RandomRotation: {degrees: 15}}, ...]`` resolved against torchvision.transforms.v2.

Pipelines run on uint8 image tensors (no PIL). ``build_pipeline`` adds what the dataset needs unless the
list already does it: conversion to float in [0, 1] (placed before the first step that needs floats)
and normalisation with the dataset's mean and std.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Sequence

import torch

from trainyard.config import suggest
from trainyard.errors import ConfigError, first_line

# Transforms that do not take one classification image and return one: what they need instead, and why
# they cannot go in a per-sample pipeline. Every other v2 transform works on one image tensor.
NOT_PER_IMAGE: dict[str, tuple[str, str]] = {
    "CutMix": ("batch", "mixes a batch of images and their labels (apply it after collation)"),
    "MixUp": ("batch", "mixes a batch of images and their labels (apply it after collation)"),
    "ClampBoundingBoxes": ("boxes", "acts on bounding boxes (detection), a plain image passes through unchanged"),
    "ClampKeyPoints": ("boxes", "acts on keypoints (pose estimation), a plain image passes through unchanged"),
    "ConvertBoundingBoxFormat": ("boxes", "acts on bounding boxes (detection)"),
    "SanitizeBoundingBoxes": ("boxes", "needs bounding boxes and their labels (detection)"),
    "SanitizeKeyPoints": ("boxes", "acts on keypoints (pose estimation)"),
    "SetClampingMode": ("boxes", "sets how bounding boxes are clamped (detection)"),
    "RandomIoUCrop": ("boxes", "crops around bounding boxes (detection), needs boxes in the sample"),
    "UniformTemporalSubsample": ("video", "picks frames of a video tensor (T, C, H, W)"),
    "FiveCrop": ("crops", "returns 5 crops per image, which a classifier's batch cannot hold"),
    "TenCrop": ("crops", "returns 10 crops per image, which a classifier's batch cannot hold"),
    "ToPILImage": ("pil", "turns a tensor into a PIL image; trainyard pipelines stay on tensors"),
}

# Steps that need a float image: the automatic conversion goes before the first of them.
NEEDS_FLOAT = ("Normalize", "GaussianNoise", "LinearTransformation")
# Steps that already convert to float (then no conversion is added).
CONVERTS = ("ToDtype", "ConvertImageDtype")  # ToTensor leaves tensors as they are: it converts PIL images only
# Steps whose ``transforms`` argument is itself a list of entries.
CONTAINERS = ("Compose", "RandomApply", "RandomChoice", "RandomOrder")

# A working entry for every transform with required arguments (shown by `trainyard transforms NAME`).
EXAMPLES: dict[str, dict[str, Any]] = {
    "CenterCrop": {"size": 24},
    "Compose": {"transforms": [{"RandomHorizontalFlip": {}}, {"RandomRotation": {"degrees": 10}}]},
    "ConvertBoundingBoxFormat": {"format": "XYXY"},
    "CutMix": {"num_classes": 10},
    "FiveCrop": {"size": 16},
    "GaussianBlur": {"kernel_size": 3},
    "JPEG": {"quality": [50, 90]},
    "Lambda": {"lambd": "torchvision.transforms.v2.functional:vertical_flip"},
    "MixUp": {"num_classes": 10},
    "Normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "Pad": {"padding": 4},
    "RandomAdjustSharpness": {"sharpness_factor": 2.0},
    "RandomAffine": {"degrees": 10, "translate": [0.1, 0.1]},
    "RandomApply": {"transforms": [{"ColorJitter": {"brightness": 0.4}}], "p": 0.8},
    "RandomChoice": {"transforms": [{"RandomRotation": {"degrees": 10}}, {"RandomHorizontalFlip": {"p": 1.0}}]},
    "RandomCrop": {"size": 32, "padding": 4},
    "RandomOrder": {"transforms": [{"RandomHorizontalFlip": {}}, {"RandomVerticalFlip": {}}]},
    "RandomPosterize": {"bits": 4},
    "RandomResize": {"min_size": 24, "max_size": 40},
    "RandomResizedCrop": {"size": 32, "scale": [0.6, 1.0]},
    "RandomRotation": {"degrees": 15},
    "RandomShortestSize": {"min_size": [24, 32]},
    "RandomSolarize": {"threshold": 128},
    "Resize": {"size": 36},
    "ScaleJitter": {"target_size": [32, 32]},
    "SetClampingMode": {"clamping_mode": "soft"},
    "TenCrop": {"size": 16},
    "ToDtype": {"dtype": "float32", "scale": True},
    "UniformTemporalSubsample": {"num_samples": 2},
}


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
    """``RandomRotation(degrees, interpolation='nearest', ...)``: the signature without type annotations."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return cls.__name__
    parts = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            default = p.default
            shown = repr(default.value) if hasattr(default, "value") and not isinstance(default, (int, float, str)) else repr(default)
            parts.append(f"{p.name}={shown}")
    return f"{cls.__name__}({', '.join(parts)})"


def _import_callable(spec: str, key: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{key}: cannot import {spec!r}; expected package.module:function") from None
    if not callable(func):
        raise ConfigError(f"{key}: {spec} is not callable")
    return func


def _convert_arg(name: str, arg: str, value: Any, key: str) -> Any:
    """YAML has no tuples, dtypes, tensors or functions: map lists to tuples, dtype names to torch dtypes,
    nested entries of container transforms to transforms, ``module:function`` to the function (Lambda)
    and matrices to tensors (LinearTransformation)."""
    if name in CONTAINERS and arg == "transforms":
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {name}.transforms must be a list of transform entries, got {value!r}")
        return [build_one(e, f"{key}.transforms[{i}]") for i, e in enumerate(value)]
    if name == "Lambda" and arg == "lambd" and isinstance(value, str):
        return _import_callable(value, key)
    if name == "LinearTransformation" and isinstance(value, list):
        return torch.tensor(value, dtype=torch.float32)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(dtype, torch.dtype):
            return dtype
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
        params = inspect.signature(cls).parameters
        unknown = [a for a in args if a not in params]
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            hint = suggest(str(unknown[0]), params)
            raise ConfigError(f"{key}: {name} has no argument {unknown[0]!r}{hint}; signature: {signature(cls)}")
    except (TypeError, ValueError):
        pass
    converted = {k: _convert_arg(name, k, v, key) for k, v in args.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ConfigError(f"{key}: {name}({shown}): {exc}; signature: {signature(cls)}") from None


def build_pipeline(
    entries: Sequence[Any] | None, key: str, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Any:
    """Compose the listed transforms, then add what the dataset needs unless the list already does it:
    conversion to float32 in [0, 1] (before the first step that needs floats), and normalisation with
    the dataset's mean and std. ``origins`` on the result names where each step came from, for errors."""
    module = v2()
    if entries is not None and not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{key}: must be a list of transform entries, got {entries!r}")
    steps, origins = [], []
    for i, entry in enumerate(entries or []):
        step = build_one(entry, f"{key}[{i}]")
        name = type(step).__name__
        if name in NOT_PER_IMAGE:
            raise ConfigError(f"{key}[{i}]: {name} {NOT_PER_IMAGE[name][1]}; it cannot go in a per-sample pipeline")
        steps.append(step)
        origins.append(f"{key}[{i}] {name}")
    names = [type(s).__name__ for s in steps]
    if not any(n in CONVERTS for n in names):
        at = next((i for i, n in enumerate(names) if n in NEEDS_FLOAT), len(steps))
        steps.insert(at, module.ToDtype(torch.float32, scale=True))
        origins.insert(at, f"{key} (added) ToDtype(float32, scale=True)")
    if mean is not None and std is not None and "Normalize" not in names:
        steps.append(module.Normalize(mean=list(mean), std=list(std)))
        origins.append(f"{key} (added) Normalize(dataset mean and std)")
    pipeline = module.Compose(steps)
    pipeline.origins = origins
    return pipeline


def check_pipeline(pipeline: Any, sample: torch.Tensor, where: str) -> torch.Tensor:
    """Run ``pipeline`` on one real sample, step by step, so a bad step fails now with its name
    (crop larger than the image, Normalize with the wrong number of channels, ...) instead of in a worker."""
    x = sample
    origins = getattr(pipeline, "origins", None) or [type(s).__name__ for s in pipeline.transforms]
    shape = "x".join(map(str, sample.shape))
    for step, origin in zip(pipeline.transforms, origins):
        if type(step).__name__ == "Normalize" and len(step.mean) != x.shape[0]:
            raise ConfigError(
                f"{origin}: channel mismatch: {len(step.mean)} means and stds for images with {x.shape[0]} channel(s) ({where}); "
                f"give {x.shape[0]} values, or convert the images first (Grayscale, RGB)"
            )
        try:
            x = step(x)
        except Exception as exc:  # any failure of a user-chosen step is a config problem
            text = first_line(exc)
            raise ConfigError(f"{origin}: fails on a {shape} image of {where}: {text}") from None
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ConfigError(f"{origins[-1] if origins else where}: the pipeline must end in one CxHxW image tensor, got {type(x).__name__}")
    return x
