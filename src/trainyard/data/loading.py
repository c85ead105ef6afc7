"""DataLoaders, samplers and collate functions.

Training order is a function of (seed, epoch) alone, like ``DistributedSampler`` with
``set_epoch``: that makes a resumed run see exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import importlib
import itertools
import random
import sys
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from trainyard.config import LoaderConfig
from trainyard.data.batched import BatchedLoader, batched_loader
from trainyard.errors import ConfigError


class ResumableSampler(Sampler[int]):
    """Wraps a sampler with ``set_epoch`` and can skip the first ``skip`` indices of the next epoch
    (used once, to resume a run that stopped mid-epoch)."""

    def __init__(self, inner: Sampler[int]):
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)


class EvalShardSampler(Sampler[int]):
    """Rank r of w gets indices r, r+w, r+2w, ...: every sample exactly once across ranks, no padding
    (``DistributedSampler`` pads with duplicates, which would skew validation metrics)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def train_sampler(dataset: Dataset, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> ResumableSampler:
    inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    return ResumableSampler(inner)


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a worker from torch's per-worker seed (base_seed + worker_id),
    so augmentations differ between workers and repeat for the same run seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def resolve_collate(spec: str, dataset_default: Callable | None = None) -> Callable | None:
    """``default`` (the dataset's own, else torch's), ``pad``, or ``package.module:function``."""
    if spec == "default":
        return dataset_default
    if spec == "pad":
        from trainyard.data.collate import pad_collate

        return pad_collate
    if ":" not in spec:
        raise ConfigError(f"loader.collate={spec}: allowed values are default, pad, or package.module:function")
    module_name, func_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the user's module raised while importing
        raise ConfigError(f"loader.collate={spec}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    func = getattr(module, func_name, None)
    if func is None:
        raise ConfigError(f"loader.collate={spec}: {module_name} has no attribute {func_name!r}")
    if not callable(func):
        raise ConfigError(f"loader.collate={spec}: {module_name}.{func_name} is not callable")
    return func


def resolve_pin_memory(value: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


def resolve_num_workers(value: int | str) -> int:
    """A number as is; ``auto`` here is the heuristic (the trainer first swaps in a measured value, see data/workers.py)."""
    if value == "auto":
        from trainyard.data.workers import heuristic_num_workers

        return heuristic_num_workers()
    return int(value)


def check_loader_config(cfg: LoaderConfig) -> None:
    """The loader settings that depend on each other, checked before anything runs."""
    if cfg.prefetch_factor is not None and cfg.num_workers == 0:
        raise ConfigError(f"loader.prefetch_factor={cfg.prefetch_factor}: needs loader.num_workers > 0 (it is 0); remove it or add workers")
    resolve_collate(cfg.collate)


def build_loader(
    dataset: Dataset,
    cfg: LoaderConfig,
    *,
    device: torch.device,
    sampler: Sampler | None = None,
    train: bool,
    collate_fn: Callable | None = None,
    batch_sampler: Sampler | None = None,
) -> DataLoader | BatchedLoader:
    """One loader from the loader config: the batched in-memory loader where ``loader.batched`` and the data allow
    it (see data/batched.py), else a DataLoader. Training loaders get a generator the trainer reseeds each epoch."""
    check_loader_config(cfg)
    batch_size = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
    if cfg.batched is not False:
        batched = _batched_or_reason(
            dataset,
            cfg,
            device=device,
            sampler=sampler,
            train=train,
            collate_fn=collate_fn,
            batch_sampler=batch_sampler,
            batch_size=batch_size,
        )
        if not isinstance(batched, str):
            return batched
        if cfg.batched is True and train and _is_first_rank(sampler):
            print(f"trainyard: loader.batched=true: the DataLoader instead: {batched}", file=sys.stderr, flush=True)
    workers = resolve_num_workers(cfg.num_workers)
    kwargs: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=resolve_pin_memory(cfg.pin_memory, device),
        collate_fn=resolve_collate(cfg.collate, collate_fn),
        worker_init_fn=seed_worker if workers > 0 else None,
        persistent_workers=cfg.persistent_workers and workers > 0,
        generator=torch.Generator(),
    )
    if cfg.prefetch_factor is not None and workers > 0:  # num_workers: auto may resolve to 0
        kwargs["prefetch_factor"] = cfg.prefetch_factor
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=cfg.drop_last and train, **kwargs)


def _batched_or_reason(
    dataset: Dataset,
    cfg: LoaderConfig,
    *,
    device: torch.device,
    sampler: Sampler | None,
    train: bool,
    collate_fn: Callable | None,
    batch_sampler: Sampler | None,
    batch_size: int,
) -> BatchedLoader | str:
    """The batched in-memory loader, or one line saying why this split takes the DataLoader."""
    if batch_sampler is not None:
        return "a batch sampler groups the batches (loader.bucket_by_length)"
    workers = resolve_num_workers(cfg.num_workers)
    if cfg.batched == "auto" and workers > 0:  # asked for worker processes: the DataLoader's (batched=true runs without them)
        return f"loader.num_workers={workers}: worker processes are the DataLoader's"
    if cfg.collate != "default":
        return f"loader.collate={cfg.collate} collates samples one by one"
    if collate_fn is not None:
        return "the dataset needs its own collate function"
    return batched_loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=cfg.drop_last and train,
        device=device,
        pin_memory=resolve_pin_memory(cfg.pin_memory, device),
    )


def _is_first_rank(sampler: Sampler | None) -> bool:
    inner = getattr(sampler, "inner", sampler)
    return getattr(inner, "rank", 0) == 0
