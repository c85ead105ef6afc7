"""Length bucketing: batch samples of similar length together, so padding to the longest wastes little.

:class:`LengthBucketBatchSampler` wraps the strategy's per-rank sampler instead of replacing it: the
inner sampler still decides which indices this rank sees in which order (shuffled by seed and epoch,
split across ranks by ``DistributedSampler``), and bucketing only regroups them. So it works under
any strategy, every rank gets the same number of batches, and the order is a function of
(seed, epoch) alone, which keeps resumed runs exact.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of indices from ``inner``, grouped by ``lengths``.

    Each epoch: the indices ``inner`` yields are cut into pools of ``batch_size * pool_batches``;
    each pool is sorted by length (a stable sort, so equal lengths keep their shuffled order) and cut
    into batches; with ``shuffle`` the batches of all pools are shuffled, seeded by (seed, epoch), so
    consecutive steps do not go from short to long texts. Bigger pools pad less and mix less.
    """

    def __init__(
        self,
        inner: Sampler[int],
        lengths: Sequence[int],
        batch_size: int,
        *,
        pool_batches: int = 100,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ):
        self.inner = inner
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.pool = batch_size * pool_batches
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # samples already trained on this epoch (the trainer's unit); skipped as whole batches once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        indices = torch.tensor(list(self.inner), dtype=torch.long)
        batches: list[list[int]] = []
        for start in range(0, len(indices), self.pool):
            pool = indices[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)].tolist()
            batches.extend(pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()  # only the last pool can end short: it is the only one not a multiple of batch_size
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip // self.batch_size, 0  # resuming mid-epoch: the first `skip` batches were trained on
        yield from self.batches()[skip:]

    def __len__(self) -> int:
        n = len(self.inner)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def sample_lengths(dataset) -> Sequence[int]:
    """A dataset's per-sample lengths (``dataset.lengths``), for ``loader.bucket_by_length``."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        from trainyard.errors import ConfigError

        raise ConfigError(
            f"loader.bucket_by_length=true: the {type(dataset).__name__} training set has no sample lengths (text datasets have them)"
        )
    return lengths
