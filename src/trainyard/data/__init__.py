"""Datasets by name or import path. Each builder turns the run config into a :class:`DataBundle`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from trainyard.config import RunConfig
from trainyard.errors import ConfigError
from trainyard.registry import Registry, call_with, is_import_path


@dataclass
class DataInfo:
    """What the model, the task and the trackers need to know about the data."""

    kind: str  # "image", "text", "features" (1-D vectors) or "other"
    num_classes: int | None = None  # class ids 0..num_classes-1 (classification); None for other targets
    classes: list[str] = field(default_factory=list)
    in_channels: int | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None  # per channel, after scaling to [0, 1]
    std: tuple[float, ...] | None = None
    vocab_size: int | None = None
    pad_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    in_features: int | None = None  # 1-D inputs: their length
    target_shape: tuple[int, ...] = ()  # one sample's target: () for a class id or a number, (L,) for a vector
    num_outputs: int | None = None  # what the model's head must output, set by the task

    @property
    def outputs(self) -> int:
        """The width of the model's head: what the task asks for, else one logit per class."""
        if self.num_outputs is not None:
            return self.num_outputs
        if self.num_classes is None:
            raise ConfigError("the data has no class count and no task set the model's output size")
        return self.num_classes

    @property
    def num_labels(self) -> int | None:
        """Multi-label targets: the length of each 0/1 vector."""
        return self.target_shape[0] if len(self.target_shape) == 1 else None

    def facts(self) -> dict[str, Any]:
        """What a user's model constructor gets where its signature names it."""
        return {
            "num_classes": self.num_classes,
            "num_outputs": self.num_outputs,
            "num_labels": self.num_labels,
            "in_channels": self.in_channels,
            "in_features": self.in_features,
            "image_size": self.image_size,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id if self.vocab_size else None,
        }


@dataclass
class DataBundle:
    """The splits of one dataset. val and test may be None when the dataset has none and no split was asked for."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    info: DataInfo
    collate_fn: Callable | None = None  # a dataset-required collate (text); loader.collate overrides
    train_labels: Any = None  # labels of the training split, for samplers and checks (optional)
    save_artifacts: Callable[[Path], None] | None = None  # writes what evaluation needs (tokenizer, label map) into the run folder


# Built-in datasets; data.dataset may also be an import path (see trainyard.data.user).
DATASETS = Registry("dataset", "data.dataset")
DATASETS.register("digits", "trainyard.data.vision:digits", "scikit-learn's 1,797 8x8 handwritten digits (bundled, offline)")
DATASETS.register("mnist", "trainyard.data.vision:mnist", "torchvision MNIST")
DATASETS.register("fashion_mnist", "trainyard.data.vision:fashion_mnist", "torchvision FashionMNIST")
DATASETS.register("cifar10", "trainyard.data.vision:cifar10", "torchvision CIFAR10")
DATASETS.register("cifar100", "trainyard.data.vision:cifar100", "torchvision CIFAR100")
DATASETS.register("image_folder", "trainyard.data.vision:image_folder", "data.root/train/<class>/* (ImageFolder layout)")
DATASETS.register("text", "trainyard.data.text:text", "CSV, TSV or JSONL text classification")
DATASETS.register(
    "diabetes", "trainyard.data.user:diabetes", "scikit-learn's diabetes regression set: 442 patients, 10 features (bundled, offline)"
)

PYTHON = "python"  # data.dataset of a run whose datasets were passed to trainyard.fit()


def build_data(cfg: RunConfig, run_dir: Path | None = None, datasets: dict | None = None) -> DataBundle:
    """``run_dir``: the folder of a run being resumed. A builder that takes a ``run_dir`` argument reuses what its
    ``save_artifacts`` wrote there (a trained tokenizer, a label map), so ids match the checkpoint.
    ``datasets``: splits passed from Python (``trainyard.fit``), used instead of ``data.dataset``."""
    from trainyard.data.user import from_splits

    if datasets is not None:
        return from_splits(cfg, datasets, "the datasets passed to trainyard.fit")
    name = cfg.data.dataset
    if name == PYTHON:
        raise ConfigError(
            "data.dataset=python: this run was trained from Python on datasets passed to trainyard.fit(); "
            "continue it the same way: trainyard.fit(..., resume=RUN_DIR)"
        )
    builder = DATASETS.get(name)
    if name in DATASETS:  # a built-in: takes the run config
        if run_dir is not None and "run_dir" in _params(builder):
            return builder(cfg, run_dir=Path(run_dir))
        return builder(cfg)
    if not callable(builder):
        raise ConfigError(f"data.dataset={name}: {type(builder).__name__} is not a function or Dataset class")
    facts = {"cfg": cfg, "run_dir": Path(run_dir) if run_dir is not None else None}
    result = call_with(builder, "data.args" if cfg.data.args else f"data.dataset={name}", cfg.data.args, facts)
    if isinstance(result, DataBundle):
        return result
    return from_splits(cfg, result, f"data.dataset={name}")


def _params(fn: Callable) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


__all__ = ["DATASETS", "DataBundle", "DataInfo", "build_data", "is_import_path"]
