"""Padding waste and loader speed on real text: random batches against length-bucketed batches.

    PYTHONPATH=src python benchmarks/text_padding.py [--data ../shared/data/sms_spam/SMSSpamCollection]

The SMS Spam Collection's training split, tokenized by trainyard (basic tokenizer), batched three ways
over the same epochs: random batches (what ``loader.shuffle`` gives), trainyard's length buckets
(``loader.bucket_by_length``), and, for loader speed, a plain PyTorch DataLoader over a list of
tensors with ``pad_sequence``. Padded share = padded positions / all positions of the padded batches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from torch.nn.utils.rnn import pad_sequence  # noqa: E402
from torch.utils.data import BatchSampler, DataLoader  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from trainyard.config import load_config  # noqa: E402
from trainyard.data import build_data  # noqa: E402
from trainyard.data.bucketing import LengthBucketBatchSampler  # noqa: E402
from trainyard.data.loading import train_sampler  # noqa: E402

DEFAULT_DATA = next(
    (
        p
        for p in (ROOT.parent / "shared/data/sms_spam/SMSSpamCollection", ROOT.parent.parent / "shared/data/sms_spam/SMSSpamCollection")
        if p.is_file()
    ),
    ROOT.parent / "shared/data/sms_spam/SMSSpamCollection",
)


def padding(batches: list[list[int]], lengths: list[int]) -> tuple[int, int]:
    """(padded positions, real tokens) of these batches when each is padded to its longest sample."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return total - real, real


def raw_collate(samples):
    ids = [x for x, _ in samples]
    return pad_sequence(ids, batch_first=True, padding_value=0), torch.tensor([len(x) for x in ids]), torch.tensor([y for _, y in samples])


def tokens_per_s(loader: DataLoader, epochs: int, real_tokens: int) -> float:
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler = loader.batch_sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif hasattr(getattr(sampler, "sampler", None), "set_epoch"):
            sampler.sampler.set_epoch(epoch)
        for _ in loader:
            pass
    return epochs * real_tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5, help="epochs averaged for the padded share")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds for tokens/s")
    args = ap.parse_args()

    cfg = load_config(
        None, ["data.dataset=text", f"data.path={args.data}", "data.columns=[label,text]", f"loader.batch_size={args.batch_size}"]
    )
    data = build_data(cfg)
    train, lengths, bs = data.train, data.train.lengths, args.batch_size
    print(
        f"{len(train)} training texts, {sum(lengths)} tokens, length min {min(lengths)} / median {sorted(lengths)[len(lengths) // 2]} / "
        f"max {max(lengths)}"
    )

    def random_batches() -> BatchSampler:
        return BatchSampler(train_sampler(train, shuffle=True, seed=0), bs, drop_last=False)

    def bucketed_batches() -> LengthBucketBatchSampler:
        return LengthBucketBatchSampler(train_sampler(train, shuffle=True, seed=0), lengths, bs, seed=0)

    shares = {}
    pads = {}
    for name, make in (("random", random_batches), ("bucketed", bucketed_batches)):
        sampler, padded, real = make(), 0, 0
        for epoch in range(args.epochs):
            (sampler if name == "bucketed" else sampler.sampler).set_epoch(epoch)
            p, r = padding(list(sampler), lengths)
            padded, real = padded + p, real + r
        shares[name], pads[name] = padded / (padded + real), padded
        print(f"{name:9s} batches: {padded / args.epochs:9.0f} padded positions per epoch, {shares[name]:.1%} of all positions")

    # Loader speed: real tokens delivered per second, trainyard (random and bucketed) against plain PyTorch, alternating.
    raw_ds = [train[i] for i in range(len(train))]
    loaders = {
        "trainyard_random": DataLoader(train, batch_sampler=random_batches(), collate_fn=data.collate_fn),
        "trainyard_bucketed": DataLoader(train, batch_sampler=bucketed_batches(), collate_fn=data.collate_fn),
        "torch_random": DataLoader(raw_ds, batch_size=bs, shuffle=True, collate_fn=raw_collate),
    }
    speed: dict[str, list[float]] = {k: [] for k in loaders}
    for _ in range(args.rounds):
        for name, loader in loaders.items():
            speed[name].append(tokens_per_s(loader, 1, sum(lengths)))
    best = {k: max(v) for k, v in speed.items()}
    for name, value in best.items():
        print(f"{name:19s} {value:12,.0f} real tokens/s (best of {args.rounds})")

    print(f"RESULT padded_share_random {shares['random']:.4f}")
    print(f"RESULT padded_share_bucketed {shares['bucketed']:.4f}")
    print(f"RESULT padding_reduction {pads['random'] / max(pads['bucketed'], 1):.2f}")
    for name, value in best.items():
        print(f"RESULT loader_tokens_per_s_{name} {value:.0f}")
    print(f"RESULT loader_speed_vs_torch {best['trainyard_random'] / best['torch_random']:.2f}")


if __name__ == "__main__":
    main()
