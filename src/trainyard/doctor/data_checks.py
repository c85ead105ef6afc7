"""Checks on the data and the loader: labels, input values, loader speed, samplers, batch arithmetic, split overlap."""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from trainyard.doctor import PASS, Finding, fail, merge, ok, warn
from trainyard.doctor.context import BATCH_NORM_LAYERS, Context, NotBuilt, base_and_indices, content_key, float_tensors, strategy_class
from trainyard.errors import DataError

IMBALANCE_WARN = 10.0  # largest / smallest class count (positives / negatives for binary and each label)
TARGET_SCALE_WARN = 10.0  # regression targets beyond this mean or std, or with a std below its inverse, want standardising
DATA_BOUND_FRACTION = 0.3  # share of a step spent waiting on data above which the run is data-bound
LOADER_BATCHES = 12  # batches timed by the loader check (after one warm-up batch)
LOADER_SECONDS = 3.0
DROP_WARN_FRACTION = 0.1
HASH_SECONDS = 5.0  # time budget of the duplicate check


def labels(ctx: Context) -> Finding:
    """1. The training targets fit the task: class ids in [0, num_classes) with every class present (and
    the imbalance); 0/1 for binary and multilabel (labels never or always positive, positive rates);
    finite values on a scale near 1 for regression."""
    fix = f"make the targets fit task.name={ctx.cfg.task.name}, or pick the task that fits them"
    try:
        task = ctx.task
        targets, sampled = ctx.train_labels
    except NotBuilt as exc:
        if isinstance(exc.error, DataError):  # e.g. the user's targets, checked against the task while the data is built
            return fail(str(exc.error), fix)
        raise
    of = f"{'a sample of ' if sampled else ''}{len(targets)} training targets"
    if len(targets) == 0:
        return fail("the training split is empty", "check data.val_fraction / data.test_fraction and the dataset's files")
    try:  # what from_splits checks for the user's datasets; a built-in or a DataBundle of the user's meets it here
        task.check_targets(targets, "train split" + (" (a sample)" if sampled else ""))
    except DataError as exc:
        return fail(str(exc), fix)
    kind = task.targets
    if kind == "class":
        return _class_ids(ctx, targets, sampled, of)
    if kind == "binary":
        return _binary(targets, sampled, of)
    if kind == "labels":
        return _label_vectors(ctx, targets, sampled, of)
    return _values(targets, of)


def _class_ids(ctx: Context, labels: torch.Tensor, sampled: bool, of: str) -> Finding:
    info = ctx.data.info
    k = info.num_classes
    if k is None:
        return fail(
            f"{of}, but the data gives no class count (DataInfo.num_classes is None)", "set DataInfo.num_classes in the dataset builder"
        )
    labels = labels.long()  # check_targets has ruled out fractional values
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
        return (warn if sampled else fail)(
            f"{len(missing)} of {k} classes have no training sample in {of}: {_listed(missing)}",
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


def _listed(names: list[str]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _binary(targets: torch.Tensor, sampled: bool, of: str) -> Finding:
    t = targets.float().flatten()
    hard = bool(((t == 0) | (t == 1)).all())
    positive = int((t > 0.5).sum())
    n = len(t)
    seen = f"{of} in {{0, 1}}" if hard else f"{of} in [0, 1] (soft, mean {t.mean().item():.2f})"
    seen += f": {positive} positive ({positive / n:.0%})"
    if positive in (0, n):
        return (warn if sampled else fail)(
            seen, f"every target is {int(positive == n)}: the model learns one answer; check the labels and the split"
        )
    ratio = max(positive, n - positive) / min(positive, n - positive)
    if ratio >= IMBALANCE_WARN:
        return warn(
            seen + f" (imbalance {ratio:.0f}x)",
            "accuracy flatters the majority: watch f1, or set task.loss_args={pos_weight: ...} (a tensor of negatives/positives)",
        )
    return ok(seen)


def _label_vectors(ctx: Context, targets: torch.Tensor, sampled: bool, of: str) -> Finding:
    t = targets.float().reshape(len(targets), -1)
    n, width = t.shape
    names = ctx.data.info.classes if len(ctx.data.info.classes) == width else [str(i) for i in range(width)]
    rate = t.mean(0)
    never = [names[i] for i in range(width) if rate[i] == 0]
    always = [names[i] for i in range(width) if rate[i] == 1]
    seen = (
        f"{width} labels in {of}, positive rate {rate.min().item():.0%}..{rate.max().item():.0%} per label (mean {rate.mean().item():.0%})"
    )
    findings: list[Finding] = []
    if never:
        findings.append(
            (warn if sampled else fail)(
                f"{len(never)} of {width} labels are never positive in training: {_listed(never)}",
                "the model learns to never predict them; check the label columns and the split",
            )
        )
    if always:
        findings.append(
            (warn if sampled else fail)(
                f"{len(always)} of {width} labels are positive in every training sample: {_listed(always)}",
                "they carry no information; check the label columns or drop them",
            )
        )
    if findings:
        return merge([Finding(PASS, seen)] + findings)
    rare = [names[i] for i in range(width) if min(rate[i], 1 - rate[i]) * (1 + IMBALANCE_WARN) <= 1]
    if rare:
        return warn(
            seen + f": {len(rare)} labels are rare or near-constant ({_listed(rare)})",
            "watch per-label metrics (f1_macro), or set task.loss_args={pos_weight: ...}",
        )
    return ok(seen)


def _values(targets: torch.Tensor, of: str) -> Finding:
    t = targets.double().reshape(len(targets), -1)
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    if nan or inf:
        return fail(f"{nan} NaN and {inf} Inf values in {of}", "drop or impute those samples: one non-finite target makes the loss NaN")
    mean, std = t.mean().item(), t.std().item() if t.numel() > 1 else 0.0
    per_dim = t.std(0) if len(t) > 1 else torch.zeros(t.shape[1], dtype=t.dtype)
    spread = f", std {per_dim.min().item():.3g}..{per_dim.max().item():.3g} per dimension" if t.shape[1] > 1 else ""
    seen = f"{of} finite: mean {mean:.3g}, std {std:.3g}, range [{t.min().item():.3g}, {t.max().item():.3g}]{spread}"
    if std == 0:
        return fail(seen + ": every target is the same", "nothing to learn: check the target column")
    scale = max(abs(mean), per_dim.max().item())
    if scale > TARGET_SCALE_WARN or per_dim.min().item() < 1 / TARGET_SCALE_WARN:
        how = f"(y - {mean:.3g}) / {std:.3g}" if t.shape[1] == 1 else "each dimension by its training mean and std"
        return warn(
            seen + ": far from scale 1",
            f"standardise the targets in the dataset ({how}): the loss and the head's initial outputs then start near 1",
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
        return fail(
            seen + ": every input value is the same", "the transforms erase the signal (a Normalize with a huge std? an all-black image?)"
        )
    if hi > 2.0 and lo >= 0.0:
        return warn(
            seen + ": not scaled (raw 0..255 pixels?)",
            "convert with ToDtype(float32, scale=True) and add Normalize(mean, std) in data.train_transforms / data.eval_transforms",
        )
    if lo >= 0.0 and hi <= 1.0:
        return warn(
            seen + ": scaled to [0, 1] but not normalised", "add Normalize(mean, std) (or leave it, if the model expects [0, 1] inputs)"
        )
    if ctx.data.info.kind == "features":  # vectors from the user's dataset: no transforms to add Normalize to
        return warn(seen + ": far from mean 0, std 1", "standardise each feature with the training split's mean and std in the dataset")
    return warn(seen + ": far from mean 0, std 1", "normalise with the training split's mean and std (Normalize in the transforms)")


def loader(ctx: Context) -> Finding:
    """7. Data time against compute time per step; num_workers against the CPUs; pin_memory without CUDA."""
    from trainyard.data.workers import cpu_count, resolve_auto
    from trainyard.tools.workers import timed_pass, train_step

    cfg, device = ctx.cfg, ctx.device
    workers, cpus = resolve_auto(cfg)[0], cpu_count()
    findings: list[Finding] = []
    if workers > cpus:
        findings.append(
            warn(
                f"loader.num_workers={workers} on {cpus} CPUs", "more workers than cores only adds contention: run `trainyard tune-workers`"
            )
        )
    if cfg.loader.pin_memory is True and device.type != "cuda":
        findings.append(
            warn(
                f"loader.pin_memory=true on {device.type}", "pinning helps only CUDA copies and costs time here: set loader.pin_memory=auto"
            )
        )

    ctx.seed()
    step = train_step(cfg, ctx.fresh_model(), device, ctx.loss_fn)
    # the first batch pays for starting workers: timed_pass leaves it (and its step) out
    timed = timed_pass(ctx.train_loader(), LOADER_SECONDS, step, device, min_batches=3, max_batches=LOADER_BATCHES)
    if timed.batches == 0:
        findings.append(ok("the training loader gives no batch to time"))
        return merge(findings)
    n = timed.batches
    wait, compute = timed.wait_s, max(timed.seconds - timed.wait_s, 0.0)
    share = wait / max(wait + compute, 1e-12)
    seen = (
        f"waiting on data {share:.0%} of each step ({1e3 * wait / n:.1f} ms data, {1e3 * compute / n:.1f} ms compute per batch, "
        f"loader.num_workers={workers}, {cpus} CPUs)"
    )
    findings.append(Finding(PASS, "", measured={"data_share": share, "data_ms": 1e3 * wait / n, "compute_ms": 1e3 * compute / n}))
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
        findings.append(
            fail(
                f"the trainer called set_epoch with {calls} over epochs 0 and 1",
                "the training loop must call sampler.set_epoch(epoch) before each epoch",
            )
        )
    if name != "ddp":
        findings.insert(
            0,
            ok(
                f"one data stream (parallel.strategy={name}): batch {batch} x accumulate {accumulate} = {batch * accumulate} samples per "
                "optimizer step; the trainer calls set_epoch each epoch"
            ),
        )
        return merge(findings)

    cls = strategy_class(name)
    replicas = world if world and world > 1 else 2
    if cls is None:
        from trainyard.parallel import STRATEGIES, Strategy

        cls = Strategy
        findings.append(
            warn(
                f"parallel.strategy={name} is not registered in this trainyard (have: {', '.join(STRATEGIES)}); checked the default "
                "Strategy.train_sampler",
                "install a trainyard with the ddp strategy",
            )
        )
    shares, orders = [], []
    for rank in range(replicas):
        s = cls(cfg)  # constructing starts nothing; launch() and setup() do
        s.rank, s.local_rank, s.world_size = rank, rank, replicas
        smp = s.train_sampler(ctx.data.train, shuffle=cfg.loader.shuffle, seed=cfg.seed)
        if not hasattr(smp, "set_epoch"):
            return merge(
                findings
                + [
                    fail(
                        f"the ddp training sampler ({type(smp).__name__}) has no set_epoch: every epoch repeats one order",
                        "use a DistributedSampler (Strategy.train_sampler does)",
                    )
                ]
            )
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
        return merge(
            findings
            + [
                fail(
                    f"{replicas} ranks share {overlap} training samples per epoch (DistributedSampler pads only {padding})",
                    "each rank must get its own shard: DistributedSampler(num_replicas=world_size, rank=rank)",
                )
            ]
        )
    if len(set(seen_all)) < n:
        findings.append(fail(f"{n - len(set(seen_all))} of {n} training samples reach no rank", "the shards must cover the dataset"))
    if cfg.loader.shuffle and all(a == b for a, b in orders):
        findings.append(fail("set_epoch(1) gives the same order as epoch 0", "the sampler must reshuffle per epoch (seed + epoch)"))
    where = f"{replicas} ranks" + ("" if world else " (parallel.devices=auto: the count is decided at launch; 2 simulated)")
    findings.insert(
        0,
        ok(
            f"ddp over {where}: each rank gets {len(shares[0])} of {n} samples, disjoint, reshuffled by set_epoch, which the trainer "
            "calls each epoch; "
            f"batch {batch} per rank x {replicas} ranks x accumulate {accumulate} = {batch * replicas * accumulate} samples per optimizer "
            "step"
        ),
    )
    return merge(findings)


def trainer_set_epoch_calls(ctx: Context) -> list[int]:
    """The epochs the real Trainer passes to its sampler's set_epoch over two one-step epochs."""
    from trainyard.engine.trainer import Trainer

    cfg = copy.deepcopy(ctx.cfg)
    cfg.trainer.max_steps, cfg.trainer.epochs, cfg.trainer.progress = 1, 2, False
    calls: list[int] = []
    ctx.seed()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, ctx.strategy, ctx.data, ctx.fresh_model(), Path(tmp), None, task=ctx.task)
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
            return fail(
                f"loader.batch_size={b} > {where} with loader.drop_last=true: an epoch has no batch",
                "lower loader.batch_size or set loader.drop_last=false",
            )
        share = rest / per_rank
        seen = f"{where}, batch {b}: {full} batches; drop_last drops {rest} samples ({share:.1%}) every epoch"
        if share >= DROP_WARN_FRACTION:
            return warn(seen, f"pick a batch size that divides {per_rank} more evenly, or set loader.drop_last=false")
        return ok(seen)
    if full == 0:
        return warn(
            f"loader.batch_size={b} > {where}: an epoch is one partial batch of {per_rank}",
            "lower loader.batch_size (one step per epoch trains slowly)",
        )
    seen = f"{where}, batch {b}: {full} full batches" + (f" + one of {rest}" if rest else "") + " (drop_last=false: nothing dropped)"
    norms = [m for m in ctx.model.modules() if isinstance(m, BATCH_NORM_LAYERS)]
    if rest == 1 and norms:
        return warn(
            seen + ": the last batch holds 1 sample and the model has batch norm",
            "set loader.drop_last=true (batch norm cannot normalise one sample)",
        )
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
            findings.append(
                make(
                    f"{dup} of {checked} {name} samples ({share:.0%}) also occur in training",
                    f"deduplicate before splitting: they inflate {name} metrics"
                    + ("; is the split built from the training data?" if share >= 0.5 else ""),
                )
            )
    note = " (hashed within the time budget, not all samples)" if partial else ""
    if not findings:
        return ok(f"no training sample repeats in {' or '.join(parts)} samples (content hashes of the raw inputs){note}")
    return merge(findings)
