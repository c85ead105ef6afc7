"""Collate functions. Module-level and picklable, so they work in worker processes under spawn."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def pad_collate(samples: Sequence[tuple[Any, Any]], pad_value: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pad variable-length 1-D samples to the longest in the batch.

    Returns ``({"ids": (B, L), "lengths": (B,), "mask": (B, L) True on real tokens}, labels)``.
    """
    seqs = [torch.as_tensor(x) for x, _ in samples]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    longest = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), longest), pad_value, dtype=seqs[0].dtype if seqs else torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    mask = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
    labels = torch.as_tensor([y for _, y in samples])
    return {"ids": ids, "lengths": lengths, "mask": mask}, labels
