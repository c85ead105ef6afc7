"""Running training totals (loss x samples, the task's statistic, samples) with no per-step kernels.

The statistic is the task's (``Task.train_stat``): correct predictions for classification, absolute error
for regression, each with the count it is a share of.

Summing each step's loss and correct count as it comes costs small kernels between the model's own, which on a
small model slow the whole step; so each step only keeps references to its loss, logits and labels, folded in
one batch at log steps, once ``max_held`` elements are kept (memory stays reused and in cache), before the
garbage collector's youngest generation fills (it would scan them mid-loop), and at the epoch end. Nothing is
read to the host here, so the hot path stays free of syncs.
"""

from __future__ import annotations

import gc

import torch

from trainyard.tasks import output_logits

# Fold the kept logits once about this many elements are held (512 KiB of float32).
MAX_HELD = 1 << 17
MAX_STEPS_GC_OFF = 1024  # micro-batches held at most where the garbage collector is off


def steps_held_before_gc() -> int:
    """Micro-batches to hold at most: well under the garbage collector's youngest-generation threshold
    (700 allocations by default), counting ~4 tracked objects a step and room for the loop's own."""
    threshold = gc.get_threshold()[0]
    return max(1, threshold // 8) if threshold > 0 else MAX_STEPS_GC_OFF


def _count_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    # max(1).indices is argmax(1) (the first maximum on ties), several times faster on CPU for few classes
    return logits.max(1).indices.eq_(labels.to(logits.device, non_blocking=True)).sum(), len(labels)


class RunningTotals:
    def __init__(self, device: torch.device, max_held: int = MAX_HELD, stat=_count_correct, stat_dtype: torch.dtype = torch.long):
        self.loss_sum = torch.zeros((), device=device)  # sum over samples of the per-sample mean loss
        self.stat_sum = torch.zeros((), device=device, dtype=stat_dtype)  # e.g. correct predictions
        self.stat_count = 0  # what stat_sum is a share of (samples, or target elements)
        self.seen = 0  # samples whose losses are in loss_sum
        self.max_held = max_held
        self.stat = stat
        self._held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (loss, labels, outputs)
        self._summed = 0  # how many of _held have their loss in loss_sum already
        self._fold_at = 1  # micro-batches held before the logits are folded: set from their size at each fold
        self._max_steps = steps_held_before_gc()

    def add(self, loss: torch.Tensor, labels: torch.Tensor, logits) -> None:
        """One micro-batch: its mean ``loss`` over ``len(labels)`` samples, and (when this process has them)
        its outputs. Only a reference is kept: this runs every step, so it does as little as it can."""
        held = self._held
        held.append((loss, labels, logits))
        if len(held) >= self._fold_at:
            self.fold()

    @torch.no_grad()  # the kept tensors may be attached to a graph: the totals must not be
    def fold_losses(self) -> None:
        """Sum the kept losses into ``loss_sum`` and their samples into ``seen`` (stack, sum, add; no host sync)."""
        new = self._held[self._summed :]
        if not new:
            return
        self._summed = len(self._held)
        sizes = [labels.shape[0] for _, labels, _ in new]
        self.seen += sum(sizes)
        if len(set(sizes)) == 1:  # the usual case: one batch size
            self.loss_sum.add_(torch.stack([loss.float() for loss, _, _ in new]).sum(), alpha=sizes[0])
        else:  # a short last batch, or length-bucketed batches: one sum per batch size
            for size in set(sizes):
                self.loss_sum.add_(torch.stack([loss.float() for (loss, _, _), s in zip(new, sizes) if s == size]).sum(), alpha=size)

    @torch.no_grad()
    def fold(self) -> None:
        """Reduce everything kept into ``loss_sum``, ``seen`` and the statistic: at the epoch end, and early
        once about ``max_held`` output elements or ``steps_held_before_gc()`` micro-batches are kept."""
        self.fold_losses()
        held, self._held, self._summed = self._held, [], 0
        outputs = []
        for _, labels, out in held:
            if out is not None and (out.__class__ is not torch.Tensor or out.ndim == 0):
                out = output_logits(out)  # a dict, an object or a scalar loss from a model that computes its own loss
            if out is not None:
                outputs.append((out, labels))
        if not outputs or self.stat is None:  # a pipeline stage before the last: only the references to drop, now and then
            self._fold_at = self._max_steps
            return
        logits = torch.cat([o for o, _ in outputs]) if len(outputs) > 1 else outputs[0][0]
        labels = torch.cat([y for _, y in outputs]) if len(outputs) > 1 else outputs[0][1]
        total, count = self.stat(logits, labels)
        self.stat_sum.add_(total)
        self.stat_count += count
        self._fold_at = max(1, min(self.max_held // max(o.numel() for o, _ in outputs), self._max_steps))
