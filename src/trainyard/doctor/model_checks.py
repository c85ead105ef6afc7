"""Checks on the model against real batches: one forward pass, overfitting one batch, gradients,
train/eval modes, and a short learning-rate range test."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from trainyard.doctor import Finding, fail, merge, ok, warn
from trainyard.doctor.context import BATCH_NORM_LAYERS, DROPOUT_LAYERS, Context, describe, fmt, take
from trainyard.doctor.data_checks import TARGET_SCALE_WARN
from trainyard.tasks import output_logits, output_loss

OVERFIT_STEPS = 50
OVERFIT_SAMPLES = 64  # the one batch the model must memorise
OVERFIT_DROP = 0.9  # the loss must fall at least this much
INIT_LOSS_WARN = 3.0  # initial loss above this many times chance is suspicious
# Regression: an initial loss this many times that of predicting the mean. Looser: a model predicting ~0 pays
# mean^2 + var, and the head's bias learns that offset within a few steps; this flags targets far off scale.
INIT_LOSS_WARN_REGRESSION = 10.0
MODE_LAYERS = DROPOUT_LAYERS + BATCH_NORM_LAYERS
LR_STEPS_PER_DECADE = 10
LR_MAX_STEPS = 100
LR_SMOOTHING = 0.7  # weight of the running loss in the range test's smoothed curve
LR_DIVERGED = 4.0  # the range test stops when the smoothed loss exceeds this multiple of its best


def forward(ctx: Context) -> Finding:
    """2. One forward pass on a real batch: the input fits the model, the output fits the task's targets,
    and the initial loss against chance (or, for regression, against predicting the mean)."""
    x, y = ctx.batch
    task = ctx.task
    model = ctx.fresh_model()
    info = ctx.data.info
    expects = (
        f"data gives in_channels={info.in_channels}, image_size={info.image_size}" if info.kind == "image" else f"data kind {info.kind}"
    )
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        return fail(
            f"the model fails on a real batch {describe(x)}: {type(exc).__name__}: {text}",
            f"make the model's input layer match the batch ({expects}, model.name={ctx.cfg.model.name})",
        )
    logits, own = output_logits(out), output_loss(out)
    if logits is None and own is None:
        return fail(
            f"batch {describe(x)} -> {describe(out)}: no predictions and no loss in the output",
            "return a tensor of predictions, or a dict with 'logits' (and 'loss' if the model computes its own)",
        )
    if logits is not None:
        why = task.check_output(logits, y)
        if why:
            width = task.num_outputs()
            head = f"{width} per sample" if width is not None else "what the targets need"
            return fail(
                f"batch {describe(x)} -> {why}",
                f"make the model's last layer output {head} (task.name={ctx.cfg.task.name}; a model built by name gets it as num_outputs)",
            )
    loss = ctx.loss(out, y).item()
    got = f"{'logits' if task.targets != 'value' else 'predictions'} {tuple(logits.shape)}" if logits is not None else "its own loss"
    seen = f"batch {describe(x)} -> {got}; initial loss {loss:.4g}"
    if not math.isfinite(loss):
        return fail(seen, "the first forward pass already gives a non-finite loss: see the inputs and labels checks")
    baseline = _baseline(ctx, logits, y) if own is None and logits is not None else None
    if baseline is None:
        return ok(seen)
    value, what = baseline
    seen += f" ({what} = {value:.4g})"
    regression = task.targets == "value"
    if value > 0 and loss > (INIT_LOSS_WARN_REGRESSION if regression else INIT_LOSS_WARN) * value:
        if regression:
            return warn(
                seen + ": far above predicting the mean",
                "the initial predictions are far off the targets' scale: standardise the targets (see the labels check)",
            )
        return warn(
            seen + ": far above chance",
            "confidently wrong at initialisation: scale down the last layer's initial weights, check the input scale",
        )
    return ok(seen)


def _baseline(ctx: Context, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, str] | None:
    """What the initial loss compares with, where that means something: ln K for cross-entropy over K
    classes, ln 2 per label for binary cross-entropy, the loss of predicting the batch's mean target for
    regression; None for a loss of the user's (task.loss), whose chance level is unknown."""
    task, t = ctx.task, ctx.cfg.task
    if task.targets == "value":
        mean = y.float().mean(0, keepdim=True).expand(y.shape)
        return ctx.loss(mean.reshape(logits.shape).to(logits.dtype).contiguous(), y).item(), "predicting the mean"
    if t.loss is not None or t.loss_args:
        return None  # another loss, or weights (pos_weight, label_smoothing): chance is not ln K
    if task.targets == "class" and task.default_loss == "CrossEntropyLoss" and ctx.data.info.num_classes:
        k = ctx.data.info.num_classes
        return math.log(k), f"chance ln {k}"
    if task.targets in ("binary", "labels") and task.default_loss == "BCEWithLogitsLoss":
        return math.log(2), "chance ln 2" + (" per label" if task.targets == "labels" else "")
    return None


def _grads(model: nn.Module) -> tuple[list[str], list[str], list[str], int]:
    """Names of trainable parameters with no gradient, with an all-zero gradient; trainable names; frozen count."""
    none, zero, trainable, frozen = [], [], [], 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen += 1
            continue
        trainable.append(name)
        if p.grad is None:
            none.append(name)
        elif not bool(p.grad.ne(0).any()):  # sync point: fine outside the run
            zero.append(name)
    return none, zero, trainable, frozen


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def overfit(ctx: Context) -> Finding:
    """4. Overfit one batch: the loss on one fixed batch falls by >= 90% within 50 steps, or the likely causes."""
    from trainyard.engine.optim import build_optimizer

    cfg = ctx.cfg
    x, y = ctx.batch
    x, y = take(x, OVERFIT_SAMPLES), y[:OVERFIT_SAMPLES]
    ctx.seed()
    model = ctx.fresh_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return fail("the model has no trainable parameter", "every parameter has requires_grad=False: unfreeze at least the classifier")
    optimizer = build_optimizer(model, cfg.optim)
    losses: list[float] = []
    no_grad = None
    for step in range(OVERFIT_STEPS):
        loss = ctx.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if not loss.requires_grad:
            return fail(
                "the loss has no graph (requires_grad=False): nothing can train",
                "the forward pass is detached: look for .detach(), .item(), .data, .numpy() or torch.no_grad() in the model",
            )
        loss.backward()
        if step == 0:
            no_grad, _, names, _ = _grads(model)
            no_grad = no_grad if len(no_grad) == len(names) else None
        optimizer.step()
        losses.append(loss.item())  # sync point: fine outside the run
        if not math.isfinite(losses[-1]):
            break
    first, final = losses[0], min(losses[-5:])
    drop = 1 - final / first if first > 0 else 0.0
    change = f"{drop:.0%} lower" if final <= first else f"{final / first:.0f}x higher"
    seen = f"one batch of {len(y)}, optim.lr={fmt(cfg.optim.lr)}: loss {first:.3f} -> {final:.3f} ({change}) in {len(losses)} steps"
    if drop >= OVERFIT_DROP and math.isfinite(final):
        return ok(seen)
    causes = []
    if no_grad:
        causes.append(
            "no parameter gets a gradient: the graph is detached (.detach(), .data, torch.no_grad in forward) or the model is frozen"
        )
    if not math.isfinite(losses[-1]):
        seen = f"one batch of {len(y)}, optim.lr={fmt(cfg.optim.lr)}: loss {first:.3f} -> {losses[-1]} at step {len(losses)}"
        causes.append(f"the loss blew up: optim.lr={fmt(cfg.optim.lr)} is too high (see the lr check)")
    elif final > first:
        causes.append(f"the loss rose: optim.lr={fmt(cfg.optim.lr)} is probably too high")
    elif cfg.optim.lr < 1e-4:
        causes.append(f"optim.lr={fmt(cfg.optim.lr)} is very small")
    if ctx.task.targets == "value":
        scale = max(abs(y.float().mean().item()), y.float().std().item() if y.numel() > 1 else 0.0)
        if scale > TARGET_SCALE_WARN:
            causes.insert(0, f"the targets are on a scale of ~{fmt(scale)}: standardise them (see the labels check)")
    if not causes:
        causes.append("check optim.lr (see the lr check), that labels belong to their inputs, frozen layers, and the model's capacity")
    make = warn if drop >= 0.5 and math.isfinite(final) else fail
    return make(seen + f" (needs >= {OVERFIT_DROP:.0%})", "likely causes: " + "; ".join(causes))


def gradients(ctx: Context) -> Finding:
    """5. Every trainable parameter gets a non-zero gradient; unused ones matter more under ddp."""
    x, y = ctx.batch
    ctx.seed()
    model = ctx.fresh_model()
    loss = ctx.loss(model(x), y)
    if not loss.requires_grad:
        return fail("the loss has no graph (requires_grad=False)", "the forward pass is detached or every parameter is frozen")
    loss.backward()
    none, zero, trainable, frozen = _grads(model)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not trainable:
        return fail("the model has no trainable parameter", "unfreeze at least the classifier (requires_grad=True)")
    ddp = ctx.cfg.parallel.strategy == "ddp"
    findings: list[Finding] = []
    if none:
        seen = f"{len(none)} of {len(trainable)} trainable tensors get no gradient: {_shown(none)}"
        if ddp and not ctx.cfg.parallel.find_unused_parameters:
            findings.append(
                fail(
                    seen,
                    "under ddp this stops the run at the first step's reduction: set parallel.find_unused_parameters=true, or "
                    "freeze/remove them",
                )
            )
        else:
            findings.append(
                warn(
                    seen,
                    "an unused branch or a detached path: remove them or freeze them (requires_grad=False); under ddp they need "
                    "parallel.find_unused_parameters=true",
                )
            )
    if zero:
        findings.append(
            warn(
                f"{len(zero)} trainable tensors get an all-zero gradient: {_shown(zero)}",
                "dead ReLUs, a zero-initialised layer behind them, or a multiplication by zero",
            )
        )
    if not findings:
        extra = f"; {frozen} frozen tensors" if frozen else ""
        return ok(f"all {len(trainable)} trainable tensors ({numel:,} parameters) get a non-zero gradient{extra}")
    return merge(findings)


def modes(ctx: Context) -> Finding:
    """6. Train and eval modes differ where they must, eval mode is deterministic, and evaluation runs in eval mode."""
    from trainyard.engine.evaluate import evaluate

    x, y = ctx.batch
    model = ctx.fresh_model()
    layers = [m for m in model.modules() if isinstance(m, MODE_LAYERS) and not (isinstance(m, DROPOUT_LAYERS) and m.p == 0)]
    kinds = sorted({type(m).__name__ for m in layers})
    findings: list[Finding] = []
    with torch.no_grad():
        model.eval()
        e1, e2 = _compared(model(x)), _compared(model(x))
        ctx.seed()
        model.train()  # batch norm updates running stats here: a copy, never the run's model
        t = _compared(model(x))
    if e1 is None:
        return fail("the model's output holds no predictions and no loss to compare between modes", "see the forward check")
    if not torch.allclose(e1, e2):
        findings.append(
            fail(
                "eval mode gives different outputs for the same batch",
                "a layer stays random in eval mode: F.dropout(x, p) needs training=self.training, or use nn.Dropout",
            )
        )
    differs = not torch.allclose(e1, t, rtol=1e-4, atol=1e-5)
    if layers and not differs:
        findings.append(
            warn(
                f"the model has {', '.join(kinds)}, but train and eval mode give the same outputs",
                "the mode does not reach those layers: does a module override train()/eval(), or hold layers in a plain list instead of "
                "nn.ModuleList?",
            )
        )

    # The engine's evaluate() must run every mode-dependent layer in eval mode and restore training mode.
    seen_training: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen_training.append(m.training)) for m in layers]
    try:
        model.train()
        evaluate(model, [(x, y)], ctx.strategy, prefix="doctor", task=ctx.task, autocast=contextlib.nullcontext)
    finally:
        for h in hooks:
            h.remove()
    if any(seen_training):
        findings.append(
            fail(
                f"during evaluation {sum(seen_training)} of {len(seen_training)} {', '.join(kinds)} layers ran in training mode",
                "model.eval() does not reach them: a method named train or eval overrides nn.Module's?",
            )
        )
    if not model.training:
        findings.append(
            fail(
                "the model stays in eval mode after evaluation",
                "model.train() does not take effect: a method named train overrides nn.Module.train?",
            )
        )
    if not findings:
        what = (
            f"{', '.join(kinds)}: train and eval outputs differ as they should"
            if layers
            else "no dropout or batch norm: the modes give the same outputs"
        )
        return ok(f"{what}; eval mode is deterministic; evaluation runs in eval mode and training resumes in train mode")
    return merge(findings)


def _compared(out) -> torch.Tensor | None:
    """What the modes check compares: the predictions, or the model's own loss when it gives only that."""
    found = output_logits(out)
    found = output_loss(out) if found is None else found
    return found.float() if found is not None else None


def lr_range(ctx: Context) -> Finding:
    """12. A short learning-rate range test: the configured rate against where the loss falls and where it diverges."""
    from trainyard.engine.optim import build_optimizer

    cfg = ctx.cfg
    lr = cfg.optim.lr
    batches = ctx.batches
    ctx.seed()
    model = ctx.fresh_model()
    optimizer = build_optimizer(model, cfg.optim)
    lo, hi = min(1e-6, lr / 10), max(10.0, lr * 3)
    steps = min(LR_MAX_STEPS, math.ceil(LR_STEPS_PER_DECADE * math.log10(hi / lo)))
    rates, curve = [], []
    smooth = best = None
    diverged_at = None
    for i in range(steps):
        rate = lo * (hi / lo) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = rate
        x, y = batches[i % len(batches)]
        loss = ctx.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()  # sync point: fine outside the run
        if not math.isfinite(value):
            diverged_at = rate
            break
        smooth = value if smooth is None else LR_SMOOTHING * smooth + (1 - LR_SMOOTHING) * value
        rates.append(rate)
        curve.append(smooth)
        best = smooth if best is None else min(best, smooth)
        if i > 5 and smooth > LR_DIVERGED * best:
            diverged_at = rate
            break
    if len(curve) < 3:
        return warn(f"the loss diverged within {len(curve)} steps of the range test from lr {fmt(lo)}", "see the overfit and inputs checks")
    low_i = min(range(len(curve)), key=curve.__getitem__)
    min_lr = rates[low_i]
    if curve[low_i] > 0.9 * curve[0]:
        return warn(
            f"the loss hardly fell at any learning rate in [{fmt(lo)}, {fmt(rates[-1])}] ({curve[0]:.3f} -> {curve[low_i]:.3f})",
            "see the overfit and gradients checks",
        )
    suggested = min_lr / 10
    span = f"loss falls up to lr ~{fmt(min_lr)}" + (
        f", diverges from ~{fmt(diverged_at)}" if diverged_at else f", still falling at {fmt(rates[-1])}"
    )
    seen = f"optim.lr={fmt(lr)}; range test over {len(curve)} steps: {span}; suggested ~{fmt(suggested)}"
    if diverged_at is not None and lr >= diverged_at:
        return fail(seen + ": the configured rate is past the point where training diverges", f"set optim.lr={fmt(suggested)}")
    if lr > min_lr:
        return warn(seen + ": the configured rate is above where the loss stops falling", f"try optim.lr={fmt(suggested)}")
    if lr < suggested / 10:
        return warn(
            seen + f": the configured rate is {suggested / lr:.0f}x below the suggestion (slow training)", f"try optim.lr={fmt(suggested)}"
        )
    return ok(seen)
