"""The batched in-memory loader: batches cut from a tensor by index, instead of ``__getitem__`` per sample and a collate.

A split held as tensors (digits, MNIST, Fashion-MNIST, CIFAR from its batches, a user's ``TensorDataset``) is
one index operation per block of batches (``x.index_select(0, idx)``), each batch a view of it. Augmentation
stays per sample, computed on the whole batch at once
(``data/batch_transforms.py``), on the training device: on CUDA the split is moved there once when it fits.

``BatchedLoader`` has the part of the DataLoader the trainer uses (``len``, iteration, ``generator``,
``pin_memory``) and is driven by the same sampler: the order, ddp sharding (``DistributedSampler``) and the
mid-epoch skip (``ResumableSampler.skip``) are the DataLoader's. Augmentation draws from a generator
reseeded for every batch from (the loader generator's seed, the batch's index in the epoch), so a run
resumed mid-epoch draws exactly what the uninterrupted run drew for the same batch.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Sampler, Subset, TensorDataset

from trainyard.data.batch_transforms import BatchPipeline, batch_pipeline
from trainyard.data.splits import TensorPairs, TransformedSubset

BLOCK_BYTES = 16 * 2**20  # inputs gathered at once: many batches per index operation, little memory
RESIDENT_FRACTION = 0.25  # on CUDA, a split moves to the device when it takes at most this share of the free memory


class InMemorySplit:
    """A split as tensors: ``inputs[rows[i]]`` and ``labels[rows[i]]`` are sample i before ``transform``."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None, transform: Any):
        self.inputs, self.labels, self.rows, self.transform = inputs, labels, rows, transform

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.inputs)


def in_memory_split(dataset: Any) -> InMemorySplit | str:
    """The tensors behind ``dataset``, or one line saying why it is not a split held as tensors."""
    rows: list[int] | None = None
    transform = None
    ds = dataset
    while isinstance(ds, (TransformedSubset, Subset)):  # index views, outermost first
        own = list(ds.indices)
        rows = own if rows is None else [own[i] for i in rows]
        if isinstance(ds, TransformedSubset) and ds.transform is not None:
            if transform is not None:
                return "the split has transforms at two levels"
            transform = ds.transform
        ds = ds.base if isinstance(ds, TransformedSubset) else ds.dataset
    if type(ds) is TensorPairs:  # exactly these classes: a subclass may override __getitem__
        inputs, labels = ds.inputs, torch.as_tensor(ds.labels)
    elif type(ds) is TensorDataset and len(ds.tensors) == 2:
        inputs, labels = ds.tensors
    elif type(ds) is TensorDataset:
        return f"a TensorDataset of {len(ds.tensors)} tensors (batched takes (input, target) pairs)"
    else:
        return f"the split is a {type(ds).__name__}, not tensors held in memory (TensorDataset, in-memory image sets)"
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor) or len(inputs) != len(labels):
        return "the inputs and targets are not two tensors of the same length"
    index = torch.as_tensor(rows, dtype=torch.long) if rows is not None else None
    return InMemorySplit(inputs, labels, index, transform)


def batch_seed(epoch_seed: int, batch: int) -> int:
    """A seed for one batch's augmentation from the epoch's seed and the batch's index in the epoch (64-bit mix)."""
    return (epoch_seed * 6364136223846793005 + (batch + 1) * 1442695040888963407) % 2**64


class BatchedLoader:
    """Iterates ``(inputs, targets)`` batches of an in-memory split in the sampler's order; see the module docstring."""

    num_workers = 0
    persistent_workers = False
    prefetch_factor = None
    collate_fn = None

    def __init__(
        self,
        split: InMemorySplit,
        pipeline: BatchPipeline,
        *,
        batch_size: int,
        sampler: Sampler | None,
        drop_last: bool,
        device: torch.device,
        pin_memory: bool,
    ):
        self.split, self.pipeline = split, pipeline
        self.batch_size, self.sampler, self.drop_last = batch_size, sampler, drop_last
        self.pin_memory = pin_memory
        self.generator = torch.Generator()  # the trainer reseeds it each epoch, as a DataLoader's
        inputs, labels, rows = split.inputs, split.labels, split.rows
        row_bytes = inputs[:1].numel() * inputs.element_size()
        if (
            device.type == "cuda"
            and torch.cuda.is_available()
            and fits_on(device, len(split) * row_bytes + labels.numel() * labels.element_size())
        ):
            if rows is not None:  # only this split's rows travel
                inputs, labels, rows = inputs[rows], labels[rows], None
            inputs, labels = inputs.to(device), labels.to(device)
        self.inputs, self.labels, self.rows = inputs, labels, rows
        self.row_bytes = row_bytes
        self.device = inputs.device
        self.augment = torch.Generator(device=self.device)
        self.pin = pin_memory and self.device.type == "cpu" and device.type == "cuda"

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip = getattr(self.sampler, "skip", 0)  # ResumableSampler: indices to skip (read before iter() clears it)
        if self.sampler is None:
            order = torch.arange(len(self.split))
        else:
            order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)  # one epoch's order, once
        if self.rows is not None:
            order = self.rows[order]
        order = order.to(self.device)
        bs = self.batch_size
        end = len(order) - len(order) % bs if self.drop_last else len(order)
        epoch_seed, b = self.generator.initial_seed(), skip // bs
        augment = self.augment if self.pipeline.steps else None
        # Gathered a block of batches at a time: one index_select per ~BLOCK_BYTES instead of one per batch (a
        # parallel kernel per small batch cost 0.3-1.7 ms on 2 shared cores, a block of them about as much).
        block = max(1, BLOCK_BYTES // max(1, bs * self.row_bytes)) * bs
        for block_start in range(0, end, block):
            idx = order[block_start : min(block_start + block, end)]
            xs, ys = self.inputs.index_select(0, idx), self.labels.index_select(0, idx)
            for start in range(0, len(idx), bs):
                x, y = xs[start : start + bs], ys[start : start + bs]  # views of the block
                if augment is not None:
                    augment.manual_seed(batch_seed(epoch_seed, b))
                    x = self.pipeline(x, augment)
                if self.pin:
                    x, y = x.pin_memory(), y.pin_memory()
                b += 1
                yield x, y

    def describe(self) -> str:
        steps = ", ".join(self.pipeline.names) if self.pipeline.names else "no transforms"
        return f"batched in-memory loader on {self.device} ({steps})"


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` take at most RESIDENT_FRACTION of the CUDA device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


def batched_loader(
    dataset: Any, *, batch_size: int, sampler: Sampler | None, drop_last: bool, device: torch.device, pin_memory: bool
) -> BatchedLoader | str:
    """A BatchedLoader for ``dataset``, or one line saying why it cannot have one."""
    split = in_memory_split(dataset)
    if isinstance(split, str):
        return split
    pipeline = batch_pipeline(split.transform)
    if isinstance(pipeline, str):
        return pipeline
    return BatchedLoader(split, pipeline, batch_size=batch_size, sampler=sampler, drop_last=drop_last, device=device, pin_memory=pin_memory)


__all__ = ["BatchedLoader", "InMemorySplit", "batch_seed", "batched_loader", "in_memory_split"]
