"""Collate functions. Module-level and picklable, so they work in worker processes under spawn."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence


def pad_collate(samples: Sequence[tuple[Any, Any]], pad_value: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pad variable-length 1-D samples to the longest in the batch.

    Returns ``({"ids": (B, L), "lengths": (B,), "mask": (B, L) True on real tokens}, labels)``.
    """
    seqs = [torch.as_tensor(x) for x, _ in samples]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    if seqs:
        ids = pad_sequence(seqs, batch_first=True, padding_value=pad_value)
    else:
        ids = torch.zeros((0, 0), dtype=torch.long)
    mask = torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    labels = torch.as_tensor([y for _, y in samples])
    return {"ids": ids, "lengths": lengths, "mask": mask}, labels
