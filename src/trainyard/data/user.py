"""The user's own datasets: one map-style ``Dataset`` (split by ``data.val_fraction``/``data.test_fraction``)
or a dict of splits (``train``, optional ``val``, ``test`` and ``classes``), from an imported
``data.dataset: package.module:function`` or from ``trainyard.fit(train=..., val=...)``.

Each item must be an ``(input, target)`` pair; the input may be a tensor or a dict of tensors. The targets
are read once (from a ``targets``/``labels`` attribute where the dataset has one, else item by item) to
check them against the task, count the classes and stratify the split.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import torch
from torch.utils.data import Dataset, TensorDataset

from trainyard.config import RunConfig
from trainyard.data import DataBundle, DataInfo
from trainyard.data.splits import TransformedSubset, base_and_indices, stratified_split
from trainyard.errors import ConfigError, DataError

MAX_TARGETS = 100_000  # targets read item by item beyond this are sampled
SPLIT_KEYS = ("train", "val", "test", "classes")


def diabetes(cfg: RunConfig) -> DataBundle:
    """scikit-learn's bundled diabetes data: 442 patients, 10 standardised features, disease progression after one year."""
    from trainyard.extras import require

    raw = require("sklearn.datasets", "sklearn", "data.dataset=diabetes", "scikit-learn").load_diabetes()
    x = torch.as_tensor(raw.data, dtype=torch.float32)
    y = torch.as_tensor(raw.target, dtype=torch.float32)
    return from_splits(cfg, TensorDataset(x, y), "data.dataset=diabetes")


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor {tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__name__}"


def _target_tensor(values: list[Any], where: str) -> torch.Tensor:
    try:
        if values and isinstance(values[0], torch.Tensor):
            return torch.stack([torch.as_tensor(v) for v in values])
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{where}: the targets do not form one tensor (they differ in shape or type: {str(exc).splitlines()[0][:120]})"
        ) from None


def targets_of(dataset: Any, where: str) -> torch.Tensor:
    """Every target of ``dataset`` (a seeded sample of MAX_TARGETS for larger ones read item by item)."""
    base, indices = base_and_indices(dataset)
    for attr in ("targets", "labels"):
        table = getattr(base, attr, None)
        if table is not None and not callable(table) and hasattr(table, "__len__") and len(table) == len(base):
            return torch.as_tensor(table)[indices] if not isinstance(table, torch.Tensor) else table[indices]
    if isinstance(base, TensorDataset) and len(base.tensors) == 2:
        return base.tensors[1][indices]
    picked = range(len(dataset)) if len(dataset) <= MAX_TARGETS else sorted(random.Random(0).sample(range(len(dataset)), MAX_TARGETS))
    return _target_tensor([dataset[i][1] for i in picked], where)


def check_item(dataset: Any, where: str) -> tuple[Any, Any]:
    """The first item, checked to be an ``(input, target)`` pair."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DataError(f"{where}: {_describe(dataset)} is not a map-style Dataset (it needs __len__ and __getitem__)")
    if len(dataset) == 0:
        raise DataError(f"{where}: the dataset is empty")
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{where}: item 0 is {_describe(item)}, expected an (input, target) pair")
    return item[0], item[1]


def _info_of(x: Any, y: Any, classes: list[str] | None) -> DataInfo:
    target = torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y
    info = DataInfo(kind="other", classes=list(classes or []), target_shape=tuple(target.shape))
    if isinstance(x, torch.Tensor):
        if x.dim() == 3:
            info.kind, info.in_channels, info.image_size = "image", int(x.shape[0]), (int(x.shape[1]), int(x.shape[2]))
        elif x.dim() == 1:
            info.kind, info.in_features = "features", int(x.shape[0])
    return info


def _class_names(split: Any) -> list[str] | None:
    base, _ = base_and_indices(split)
    names = getattr(base, "classes", None)
    return [str(c) for c in names] if isinstance(names, (list, tuple)) and names else None


def from_splits(cfg: RunConfig, result: Any, where: str, task: Any = None) -> DataBundle:
    """A DataBundle from what the user's function returned (or the Python API was given)."""
    from trainyard.tasks import Task, task_class

    if isinstance(result, Mapping):
        unknown = [k for k in result if k not in SPLIT_KEYS]
        if unknown:
            raise DataError(f"{where}: returned a dict with {', '.join(map(repr, unknown))}; allowed keys: {', '.join(SPLIT_KEYS)}")
        if result.get("train") is None:
            raise DataError(f"{where}: returned a dict without a 'train' split")
        splits = {k: result.get(k) for k in ("train", "val", "test")}
        classes = result.get("classes")
        one = False
    elif hasattr(result, "__getitem__") and hasattr(result, "__len__") and not isinstance(result, (str, bytes, list, tuple)):
        splits, classes, one = {"train": result, "val": None, "test": None}, None, True
    else:
        raise DataError(
            f"{where}: returned {_describe(result)}; expected a map-style torch Dataset or a dict of splits "
            "{'train': ..., 'val': ..., 'test': ...}"
        )

    spec = task if task is not None else cfg.task.name
    cls = type(spec) if isinstance(spec, Task) else task_class(spec)
    d = cfg.data
    firsts = {name: check_item(ds, f"{where}, {name} split") for name, ds in splits.items() if ds is not None}
    targets = {name: targets_of(ds, f"{where}, {name} split") for name, ds in splits.items() if ds is not None}
    x, y = firsts["train"]
    info = _info_of(x, y, classes or _class_names(splits["train"]))
    checker = spec if isinstance(spec, Task) else cls(info)  # the task's own target checks, before anything trains
    for name, t in targets.items():
        checker.check_targets(t, f"{where}, {name} split")

    classify = cls.targets in ("class", "binary")  # one class id per sample: counted, and the splits stratified
    if classify:
        if cls.targets == "binary":
            info.num_classes = 2
        else:
            top = max(int(t.max()) for t in targets.values() if t.numel())
            low = min(int(t.min()) for t in targets.values() if t.numel())
            if low < 0:
                raise DataError(f"{where}: negative class ids (min {low}); task={cls.name} takes class ids 0..num_classes-1")
            info.num_classes = max(top + 1, len(info.classes))
        if len(info.classes) != info.num_classes:
            info.classes = [str(c) for c in range(info.num_classes)]

    def strata(t: torch.Tensor) -> torch.Tensor:
        return t.long() if classify and len(t) == len(targets["train"]) else torch.zeros(len(t), dtype=torch.long)

    train_ds = splits["train"]
    train_idx = list(range(len(train_ds)))
    train_t = targets["train"]
    exact = len(train_t) == len(train_ds)  # False when the targets were sampled: split without strata
    chosen: dict[str, tuple[Any, list[int]]] = {}
    if one and d.test_fraction > 0:
        rest, test_rel = stratified_split(
            strata(train_t) if exact else torch.zeros(len(train_ds), dtype=torch.long), d.test_fraction, d.split_seed
        )
        chosen["test"] = (train_ds, test_rel)
        train_idx = rest
    if splits["val"] is None and d.val_fraction > 0:
        sub = train_t[train_idx] if exact else None
        kept, val_rel = stratified_split(
            strata(sub) if sub is not None else torch.zeros(len(train_idx), dtype=torch.long), d.val_fraction, d.split_seed + 1
        )
        chosen["val"] = (train_ds, [train_idx[i] for i in val_rel])
        train_idx = [train_idx[i] for i in kept]
    chosen["train"] = (train_ds, train_idx)
    for name in ("val", "test"):
        if splits[name] is not None:
            chosen[name] = (splits[name], list(range(len(splits[name]))))
    if d.max_samples is not None:
        for name, (ds, idx) in chosen.items():
            if len(idx) > d.max_samples:
                g = torch.Generator().manual_seed(d.split_seed + 2)
                chosen[name] = (ds, sorted(idx[i] for i in torch.randperm(len(idx), generator=g)[: d.max_samples].tolist()))
    if not chosen["train"][1]:
        raise DataError(f"{where}: the training split is empty after holding out data.val_fraction and data.test_fraction")

    views = {name: TransformedSubset(ds, idx) for name, (ds, idx) in chosen.items() if idx}
    train_labels = train_t.long()[chosen["train"][1]] if classify and exact else None
    return DataBundle(train=views["train"], val=views.get("val"), test=views.get("test"), info=info, train_labels=train_labels)


def check_python_dataset(obj: Any, name: str) -> None:
    """``trainyard.fit(train=...)``: a Dataset, or a DataLoader whose dataset is used (one line otherwise)."""
    if obj is not None and not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        raise ConfigError(f"trainyard.fit({name}=...): {_describe(obj)} is not a map-style Dataset")


__all__ = ["Dataset", "check_item", "check_python_dataset", "diabetes", "from_splits", "targets_of"]
