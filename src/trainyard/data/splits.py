"""Seeded, stratified splits and the dataset views built on them."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset


def stratified_split(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (kept, held out) with ``fraction`` of every class held out, seeded.

    Each class with at least two samples gives at least one to each side, so no class
    disappears from training.
    """
    labels = torch.as_tensor(labels)
    if fraction <= 0:
        return list(range(len(labels))), []
    g = torch.Generator().manual_seed(seed)
    kept: list[int] = []
    held: list[int] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        n_held = round(len(idx) * fraction)
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.extend(idx[:n_held])
        kept.extend(idx[n_held:])
    return sorted(kept), sorted(held)


class TransformedSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the input. Picklable for worker processes."""

    def __init__(self, base: Any, indices: Sequence[int] | None, transform: Callable | None = None):
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        if self.transform is not None:
            x = self.transform(x)
        return x, y


class TensorPairs(Dataset):
    """Inputs and labels held in two tensors (in-memory datasets such as digits)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | list[int]):
        self.inputs = inputs
        self.labels = torch.as_tensor(labels).tolist()  # plain ints: no tensor indexing per sample

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.inputs[i], self.labels[i]


def base_and_indices(dataset: Any) -> tuple[Any, list[int]]:
    """Look through index views (TransformedSubset, torch Subset): the underlying dataset and the indices into it."""
    indices: list[int] | None = None
    while hasattr(dataset, "indices") and (hasattr(dataset, "base") or hasattr(dataset, "dataset")):
        own = list(dataset.indices)
        indices = own if indices is None else [own[i] for i in indices]
        dataset = dataset.base if hasattr(dataset, "base") else dataset.dataset
    return dataset, list(range(len(dataset))) if indices is None else indices
