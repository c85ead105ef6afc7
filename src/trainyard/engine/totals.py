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
        self.seen = 0
        self.max_held = max_held
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._held = 0

    def add(self, loss: torch.Tensor, n: int, logits: torch.Tensor | None, labels: torch.Tensor) -> None:
        """One micro-batch: its mean ``loss`` over ``n`` samples, and (when this process has them) its logits."""
        self._losses.append(loss)
        self._sizes.append(n)
        self.seen += n
        if logits is not None:
            self._logits.append(logits)
            self._labels.append(labels)
            self._held += logits.numel()
            if self._held > self.max_held:
                self.fold()

    def _fold_losses(self) -> None:
        """Sum the kept losses into ``loss_sum`` (stack, sum, add; no host sync)."""
        if not self._losses:
            return
        losses, sizes = self._losses, self._sizes
        if len(set(sizes)) == 1:  # the usual case: one batch size
            self.loss_sum.add_(torch.stack(losses).sum(), alpha=sizes[0])
        else:  # a short last batch, or length-bucketed batches: one sum per batch size
            for size in set(sizes):
                self.loss_sum.add_(torch.stack([l for l, s in zip(losses, sizes) if s == size]).sum(), alpha=size)
        self._losses, self._sizes = [], []

    def fold(self) -> None:
        """Reduce everything kept into ``loss_sum`` and ``correct``: at log steps, the epoch end, and early once
        more than ``max_held`` logit elements are kept."""
        self._fold_losses()
        if self._logits:
            logits = torch.cat(self._logits) if len(self._logits) > 1 else self._logits[0]
            labels = torch.cat(self._labels) if len(self._labels) > 1 else self._labels[0]
            # max(1).indices is argmax(1) (the first maximum on ties), several times faster on CPU for few classes
            self.correct.add_(logits.max(1).indices.eq_(labels.to(logits.device, non_blocking=True)).sum())
            self._logits, self._labels, self._held = [], [], 0
