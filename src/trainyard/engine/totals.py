"""Running training totals (loss x samples, correct predictions, samples) with no per-step kernels.

Summing each step's loss and correct count as it comes costs five small kernels a step (add, argmax, eq,
sum, add). On a tiny model that is 5-6% of the step, more than the kernels' own time: measured in
``benchmarks/overhead.py``'s MLP, the reductions, run once a step between the model's own kernels, slow
the whole step down (their code and data evict the step's). Instead each step only keeps references to
its (detached) loss, logits and labels, reduced in one batch at log steps and at the epoch end, or once
``max_held`` elements are kept. Folding at log steps rather than once an epoch keeps the held outputs few
and their memory reused (an epoch's worth took fresh pages every step: about 1% of the MLP's time).
Nothing is read to the host here, so the hot path stays free of syncs.
"""

from __future__ import annotations

import torch

# Fold early once this many logit elements are held (16 MiB of float32): the references keep those
# tensors alive, and a big output (many classes, big batches, rare log steps) should not pile up.
MAX_HELD = 1 << 22


class RunningTotals:
    def __init__(self, device: torch.device, max_held: int = MAX_HELD):
        self.loss_sum = torch.zeros((), device=device)  # sum over samples of the per-sample mean loss
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0  # samples folded in
        self.max_held = max_held
        self._held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (loss, labels, logits)
        self._fold_at = 1  # micro-batches held before an early fold: set from the logits' size at each fold

    def add(self, loss: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None) -> None:
        """One micro-batch: its mean ``loss`` over ``len(labels)`` samples, and (when this process has them)
        its logits. Only a reference is kept: this runs every step, so it does as little as it can."""
        held = self._held
        held.append((loss, labels, logits))
        if len(held) >= self._fold_at:
            self.fold()

    def fold(self) -> None:
        """Reduce everything kept into ``loss_sum``, ``correct`` and ``seen``: at log steps, the epoch end, and
        early once about ``max_held`` logit elements are kept."""
        held, self._held = self._held, []
        if not held:
            return
        sizes = [labels.shape[0] for _, labels, _ in held]
        self.seen += sum(sizes)
        if len(set(sizes)) == 1:  # the usual case: one batch size
            self.loss_sum.add_(torch.stack([loss for loss, _, _ in held]).sum(), alpha=sizes[0])
        else:  # a short last batch, or length-bucketed batches: one sum per batch size
            for size in set(sizes):
                self.loss_sum.add_(torch.stack([loss for (loss, _, _), s in zip(held, sizes) if s == size]).sum(), alpha=size)
        outputs = [(logits, labels) for _, labels, logits in held if logits is not None]
        if outputs:
            logits = torch.cat([o for o, _ in outputs]) if len(outputs) > 1 else outputs[0][0]
            labels = torch.cat([y for _, y in outputs]) if len(outputs) > 1 else outputs[0][1]
            # max(1).indices is argmax(1) (the first maximum on ties), several times faster on CPU for few classes
            self.correct.add_(logits.max(1).indices.eq_(labels.to(logits.device, non_blocking=True)).sum())
            self._fold_at = max(1, self.max_held // max(o.numel() for o, _ in outputs))
        else:
            self._fold_at = self.max_held
