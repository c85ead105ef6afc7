"""Checks on the data and the loader: labels, input values, loader speed, samplers, batch arithmetic, split overlap."""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from trainyard.doctor import PASS, Finding, fail, merge, ok, warn
from trainyard.doctor.context import Context, base_and_indices, content_key, float_tensors, strategy_class, sync

IMBALANCE_WARN = 10.0  # largest / smallest class count
DATA_BOUND_FRACTION = 0.3  # share of a step spent waiting on data above which the run is data-bound
LOADER_BATCHES = 12  # batches timed by the loader check (after one warm-up batch)
LOADER_SECONDS = 3.0
DROP_WARN_FRACTION = 0.1
HASH_SECONDS = 5.0  # time budget of the duplicate check


def labels(ctx: Context) -> Finding:
    """1. Labels lie in [0, num_classes), every class occurs in training; the imbalance."""
    info = ctx.data.info
    labels, sampled = ctx.train_labels
    n, k = len(labels), info.num_classes
    of = f"{'a sample of ' if sampled else ''}{n} training labels"
    if n == 0:
        return fail("the training split is empty", "check data.val_fraction / data.test_fraction and the dataset's files")
    if labels.is_floating_point() or labels.is_complex():
        if not torch.equal(labels, labels.round()):
            return fail(f"{of} are fractional ({labels.dtype}), e.g. {labels[0].item()}", "classification needs integer class indices 0..num_classes-1")
        labels = labels.long()
    lo, hi = int(labels.min()), int(labels.max())
    bad = int(((labels < 0) | (labels >= k)).sum())
    if bad:
        if lo == 1 and hi == k:
            fix = f"the labels look 1-based (1..{k}): subtract 1 in the dataset so they run 0..{k - 1}"
        elif lo < 0:
            fix = "negative labels (an ignore_index or a -1 'unknown' marker?): drop those samples or map them to a class"
        else:
            fix = f"either the dataset has {hi + 1} classes (set DataInfo.num_classes) or its label mapping is off"
        return fail(f"{bad} of {of} lie outside [0, {k}) (min {lo}, max {hi}); the model has {k} outputs", fix)
    counts = torch.bincount(labels, minlength=k)
    names = info.classes if len(info.classes) == k else [str(c) for c in range(k)]
    missing = [names[c] for c in range(k) if counts[c] == 0]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        return (warn if sampled else fail)(
            f"{len(missing)} of {k} classes have no training sample in {of}: {shown}",
            "the model can never predict them; check the label mapping and the split (data.val_fraction, data.test_fraction)",
        )
    smallest, largest = int(counts.min()), int(counts.max())
    ratio = largest / smallest
    seen = f"{k} classes in [0, {k}), {smallest}..{largest} samples each in {of} (imbalance {ratio:.1f}x)"
    if ratio >= IMBALANCE_WARN:
        big, small = names[int(counts.argmax())], names[int(counts.argmin())]
        return warn(
            f"{seen}: class {big} has {largest}, class {small} {smallest}",
            "accuracy will flatter the large classes: watch per-class metrics, weight the loss or oversample the small classes",
        )
    return ok(seen)


def inputs(ctx: Context) -> Finding:
    """3. No NaN or Inf in a sample of batches; input statistics after normalisation."""
    floats = [t for x, _ in ctx.batches for t in float_tensors(x)]
    shown = f"{len(ctx.batches)} batches"
    if not floats:
        return ok(f"no NaN/Inf possible: integer inputs (token ids) in {shown}")
    nan = sum(int(torch.isnan(t).sum()) for t in floats)
    inf = sum(int(torch.isinf(t).sum()) for t in floats)
    if nan or inf:
        return fail(
            f"{nan} NaN and {inf} Inf input values in {shown}",
            "check the raw files and the transforms (a division by a zero std, a log of 0, a corrupt file)",
        )
    values = torch.cat([t.detach().flatten().float() for t in floats])
    mean, std, lo, hi = values.mean().item(), values.std().item(), values.min().item(), values.max().item()
    seen = f"no NaN/Inf in {shown}; inputs mean {mean:.2f}, std {std:.2f}, range [{lo:.2f}, {hi:.2f}]"
    if abs(mean) <= 0.5 and 0.5 <= std <= 2.0:
        return ok(seen + " (normalised)")
    if std < 1e-6:
        return fail(seen + ": every input value is the same", "the transforms erase the signal (a Normalize with a huge std? an all-black image?)")
    if hi > 2.0 and lo >= 0.0:
        return warn(seen + ": not scaled (raw 0..255 pixels?)", "convert with ToDtype(float32, scale=True) and add Normalize(mean, std) in data.train_transforms / data.eval_transforms")
    if lo >= 0.0 and hi <= 1.0:
        return warn(seen + ": scaled to [0, 1] but not normalised", "add Normalize(mean, std) (or leave it, if the model expects [0, 1] inputs)")
    return warn(seen + ": far from mean 0, std 1", "normalise with the training split's mean and std (Normalize in the transforms)")


def loader(ctx: Context) -> Finding:
    """7. Data time against compute time per step; num_workers against the CPUs; pin_memory without CUDA."""
    from trainyard.data.workers import cpu_count, resolve_auto
    from trainyard.devices import move
    from trainyard.engine.optim import build_optimizer

    cfg, device = ctx.cfg, ctx.device
    workers, cpus = resolve_auto(cfg)[0], cpu_count()
    findings: list[Finding] = []
    if workers > cpus:
        findings.append(warn(f"loader.num_workers={workers} on {cpus} CPUs", "more workers than cores only adds contention: run `trainyard tune-workers`"))
    if cfg.loader.pin_memory is True and device.type != "cuda":
        findings.append(warn(f"loader.pin_memory=true on {device.type}", "pinning helps only CUDA copies and costs time here: set loader.pin_memory=auto"))

    ctx.seed()
    model = ctx.fresh_model()
    optimizer = build_optimizer(model, cfg.optim)
    loss_fn = ctx.loss_fn
    wait = compute = 0.0
    timed = 0
    it = iter(ctx.train_loader())
    start = time.perf_counter()
    for i in range(LOADER_BATCHES + 1):
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        x, y = move(x, device), torch.as_tensor(y).to(device, non_blocking=True)
        t1 = time.perf_counter()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if i > 0:  # the first batch pays for starting workers
            wait, compute, timed = wait + t1 - t0, compute + t2 - t1, timed + 1
        if t2 - start > LOADER_SECONDS and timed >= 3:
            break
    del it
    if timed == 0:
        findings.append(ok("too few batches to time the loader"))
        return merge(findings)
    share = wait / max(wait + compute, 1e-12)
    seen = (
        f"waiting on data {share:.0%} of each step ({1e3 * wait / timed:.1f} ms data, {1e3 * compute / timed:.1f} ms compute per batch, "
        f"loader.num_workers={workers}, {cpus} CPUs)"
    )
    findings.append(Finding(PASS, "", measured={"data_share": share, "data_ms": 1e3 * wait / timed, "compute_ms": 1e3 * compute / timed}))
    if share >= DATA_BOUND_FRACTION:
        fix = "data-bound: run `trainyard tune-workers` to measure loader.num_workers"
        if workers == 0 and cpus > 1:
            fix += " (0 workers: loading and computing take turns)"
        fix += "; cheaper per-sample transforms also help"
        findings.insert(0, warn(seen, fix))
    else:
        findings.insert(0, ok(seen))
    return merge(findings)


def sampler(ctx: Context) -> Finding:
    """8. The distributed sampler gives each rank its own samples and set_epoch reshuffles them;
    the trainer calls set_epoch each epoch; per-rank and global batch sizes."""
    cfg = ctx.cfg
    name, batch, accumulate = cfg.parallel.strategy, cfg.loader.batch_size, cfg.trainer.accumulate
    world = ctx.world_size()
    calls = trainer_set_epoch_calls(ctx)
    findings: list[Finding] = []
    if calls[:2] != [0, 1]:
        findings.append(fail(f"the trainer called set_epoch with {calls} over epochs 0 and 1", "the training loop must call sampler.set_epoch(epoch) before each epoch"))
    if name != "ddp":
        findings.insert(0, ok(f"one data stream (parallel.strategy={name}): batch {batch} x accumulate {accumulate} = {batch * accumulate} samples per optimizer step; the trainer calls set_epoch each epoch"))
        return merge(findings)

    cls = strategy_class(name)
    replicas = world if world and world > 1 else 2
    if cls is None:
        from trainyard.parallel import STRATEGIES, Strategy

        cls = Strategy
        findings.append(warn(f"parallel.strategy={name} is not registered in this trainyard (have: {', '.join(STRATEGIES)}); checked the default Strategy.train_sampler", "install a trainyard with the ddp strategy"))
    shares, orders = [], []
    for rank in range(replicas):
        s = cls(cfg)  # constructing starts nothing; launch() and setup() do
        s.rank, s.local_rank, s.world_size = rank, rank, replicas
        smp = s.train_sampler(ctx.data.train, shuffle=cfg.loader.shuffle, seed=cfg.seed)
        if not hasattr(smp, "set_epoch"):
            return merge(findings + [fail(f"the ddp training sampler ({type(smp).__name__}) has no set_epoch: every epoch repeats one order", "use a DistributedSampler (Strategy.train_sampler does)")])
        smp.set_epoch(0)
        first = list(smp)
        smp.set_epoch(1)
        orders.append((first, list(smp)))
        shares.append(first)
    n = len(ctx.data.train)
    seen_all = [i for share in shares for i in share]
    overlap = len(seen_all) - len(set(seen_all))
    padding = -n % replicas
    if overlap > padding:
        return merge(findings + [fail(f"{replicas} ranks share {overlap} training samples per epoch (DistributedSampler pads only {padding})", "each rank must get its own shard: DistributedSampler(num_replicas=world_size, rank=rank)")])
    if len(set(seen_all)) < n:
        findings.append(fail(f"{n - len(set(seen_all))} of {n} training samples reach no rank", "the shards must cover the dataset"))
    if cfg.loader.shuffle and all(a == b for a, b in orders):
        findings.append(fail("set_epoch(1) gives the same order as epoch 0", "the sampler must reshuffle per epoch (seed + epoch)"))
    where = f"{replicas} ranks" + ("" if world else " (parallel.devices=auto: the count is decided at launch; 2 simulated)")
    findings.insert(0, ok(
        f"ddp over {where}: each rank gets {len(shares[0])} of {n} samples, disjoint, reshuffled by set_epoch, which the trainer calls each epoch; "
        f"batch {batch} per rank x {replicas} ranks x accumulate {accumulate} = {batch * replicas * accumulate} samples per optimizer step"
    ))
    return merge(findings)


def trainer_set_epoch_calls(ctx: Context) -> list[int]:
    """The epochs the real Trainer passes to its sampler's set_epoch over two one-step epochs."""
    from trainyard.engine.trainer import Trainer

    cfg = copy.deepcopy(ctx.cfg)
    cfg.trainer.max_steps, cfg.trainer.epochs, cfg.trainer.progress = 1, 2, False
    calls: list[int] = []
    ctx.seed()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, ctx.strategy, ctx.data, ctx.fresh_model(), Path(tmp), None)
        real = trainer.train_sampler.set_epoch

        def spy(epoch: int) -> None:
            calls.append(epoch)
            real(epoch)

        trainer.train_sampler.set_epoch = spy
        for epoch in (0, 1):
            trainer.epoch = epoch
            trainer.train_epoch()
    return calls


def batches(ctx: Context) -> Finding:
    """9. Batch size against dataset size with drop_last: how many samples each epoch drops."""
    cfg = ctx.cfg
    n, b, drop = len(ctx.data.train), cfg.loader.batch_size, cfg.loader.drop_last
    world = ctx.world_size() or 1
    per_rank = math.ceil(n / world)
    where = f"{per_rank} samples per rank" if world > 1 else f"{n} training samples"
    full, rest = divmod(per_rank, b)
    if drop:
        if full == 0:
            return fail(f"loader.batch_size={b} > {where} with loader.drop_last=true: an epoch has no batch", "lower loader.batch_size or set loader.drop_last=false")
        share = rest / per_rank
        seen = f"{where}, batch {b}: {full} batches; drop_last drops {rest} samples ({share:.1%}) every epoch"
        if share >= DROP_WARN_FRACTION:
            return warn(seen, f"pick a batch size that divides {per_rank} more evenly, or set loader.drop_last=false")
        return ok(seen)
    if full == 0:
        return warn(f"loader.batch_size={b} > {where}: an epoch is one partial batch of {per_rank}", "lower loader.batch_size (one step per epoch trains slowly)")
    seen = f"{where}, batch {b}: {full} full batches" + (f" + one of {rest}" if rest else "") + " (drop_last=false: nothing dropped)"
    norms = [m for m in ctx.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if rest == 1 and norms:
        return warn(seen + ": the last batch holds 1 sample and the model has batch norm", "set loader.drop_last=true (batch norm cannot normalise one sample)")
    return ok(seen)


def duplicates(ctx: Context) -> Finding:
    """10. Samples of the validation and test splits that also occur in training, by content hash of the raw inputs."""
    data = ctx.data
    others = [(name, ds) for name, ds in (("val", data.val), ("test", data.test)) if ds is not None and len(ds)]
    if not others:
        return ok("no validation or test split to compare with training")
    deadline = time.perf_counter() + HASH_SECONDS
    base, indices = base_and_indices(data.train)
    train_keys = set()
    for j in indices:
        train_keys.add(content_key(base, j))
        if time.perf_counter() > deadline:
            break
    partial = len(train_keys) < len(indices) and len(train_keys) < len(set(indices))
    findings, parts = [], []
    for name, ds in others:
        obase, oindices = base_and_indices(ds)
        checked = dup = 0
        for j in oindices:
            if time.perf_counter() > deadline + HASH_SECONDS / 2:
                partial = True
                break
            checked += 1
            dup += content_key(obase, j) in train_keys
        parts.append(f"{dup} of {checked} {name}")
        if dup:
            share = dup / max(checked, 1)
            make = fail if share >= 0.5 else warn
            findings.append(make(
                f"{dup} of {checked} {name} samples ({share:.0%}) also occur in training",
                f"deduplicate before splitting: they inflate {name} metrics" + ("; is the split built from the training data?" if share >= 0.5 else ""),
            ))
    note = " (hashed within the time budget, not all samples)" if partial else ""
    if not findings:
        return ok(f"no training sample repeats in {' or '.join(parts)} samples (content hashes of the raw inputs){note}")
    return merge(findings)
