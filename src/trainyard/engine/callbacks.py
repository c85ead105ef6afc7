"""Callbacks: objects with any of a few hooks, called by the step loop. The run's own extras (the first
batch's pictures and graph, weight histograms, the data-wait warning) are built-in callbacks of the same
interface, so the loop itself knows nothing about them.

A callback need not subclass :class:`Callback`; it only needs methods named after the hooks, each taking
the trainer first. Callbacks run in every process of a run: log or write only where ``trainer.is_primary``
(``trainer.tracker`` is None elsewhere). ``on_step_end`` runs after every optimizer step, and ``loss`` is
a tensor on the device: reading it (``.item()``) is a host sync, so do it only now and then.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from trainyard.errors import ConfigError
from trainyard.registry import Registry, call_with, hint

# hook -> the arguments after the trainer
HOOKS: dict[str, tuple[str, ...]] = {
    "on_run_start": (),
    "on_epoch_start": ("epoch",),
    "on_first_batch": ("x", "y"),
    "on_step_end": ("step", "loss"),
    "on_validation_end": ("metrics",),
    "on_epoch_end": ("metrics",),
    "on_checkpoint_save": ("state",),
    "on_checkpoint_load": ("state",),
    "on_run_end": ("final",),
}


class Callback:
    """Every hook does nothing here; override the ones you need."""

    def on_run_start(self, trainer: Any) -> None: ...
    def on_epoch_start(self, trainer: Any, epoch: int) -> None: ...
    def on_first_batch(self, trainer: Any, x: Any, y: Any) -> None: ...
    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None: ...
    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_checkpoint_save(self, trainer: Any, state: dict[str, Any]) -> None: ...
    def on_checkpoint_load(self, trainer: Any, state: dict[str, Any]) -> None: ...
    def on_run_end(self, trainer: Any, final: dict[str, float]) -> None: ...


def _overrides(cb: Any, hook: str) -> bool:
    method = getattr(type(cb), hook, None)
    return method is not None and method is not getattr(Callback, hook)


def check_callback(cb: Any, where: str, unbound: bool = False) -> None:
    """Every hook it defines takes (trainer, ...) as called; a name close to a hook is a typo.
    ``unbound``: ``cb`` is the class, whose methods also take ``self``."""
    cls = cb if unbound else type(cb)
    for name in dir(cls):
        if name.startswith("on_") and name not in HOOKS and hint(name, HOOKS):  # on_epoch_ends: a typo would never be called
            raise ConfigError(f"{where}: {cls.__name__}.{name} is not a hook{hint(name, HOOKS)}; hooks: {', '.join(HOOKS)}")
    for hook, args in HOOKS.items():
        if not _overrides(cb, hook) if not unbound else getattr(cls, hook, None) in (None, getattr(Callback, hook)):
            continue
        method = getattr(cb, hook)
        try:
            inspect.signature(method).bind(*([None] * (len(args) + 1 + unbound)))
        except TypeError:
            raise ConfigError(
                f"{where}: {cls.__name__}.{hook}{inspect.signature(method)} must take (trainer{''.join(', ' + a for a in args)})"
            ) from None
        except ValueError:
            continue  # no signature to read (a builtin): trust it


class Callbacks:
    """Calls each hook on every callback that defines it, in order. A hook nobody defines costs one check."""

    def __init__(self, callbacks: list[Any]):
        self.callbacks = list(callbacks)
        self.hooks = {hook: [getattr(cb, hook) for cb in self.callbacks if _overrides(cb, hook)] for hook in HOOKS}
        self.step_end = self.hooks["on_step_end"]  # read by the loop every step

    def call(self, hook: str, trainer: Any, *args: Any) -> None:
        for method in self.hooks[hook]:
            method(trainer, *args)
        if hook == "on_run_start":  # a callback that found nothing to do per step (steps_wanted False) costs the loop nothing
            self.step_end[:] = [m for m in self.step_end if getattr(getattr(m, "__self__", None), "steps_wanted", True)]


# --- the built-in callbacks --------------------------------------------------------------------


class FirstBatchPictures(Callback):
    """The model graph, the wandb watch, and the first training batch as an image grid (and a labelled grid)."""

    def on_first_batch(self, trainer: Any, x: Any, y: Any) -> None:
        tracker = trainer.tracker
        if tracker is None:
            return
        info = trainer.data.info
        plain = trainer.strategy.unwrap(trainer.model)
        tracker.watch(plain)
        if trainer.cfg.track.graph:
            was_training = plain.training
            plain.eval()
            tracker.log_graph(plain, x[:2] if isinstance(x, torch.Tensor) else x)
            plain.train(was_training)
        if trainer.cfg.track.images and isinstance(x, torch.Tensor) and x.dim() == 4:
            from trainyard.track.figures import image_grid, samples_figure

            tracker.log_image("data/train_batch", image_grid(x[:64], info.mean, info.std), trainer.step)
            if (
                isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point() and info.classes
            ):  # what `trainyard preview` writes
                tracker.log_image("data/train_samples", samples_figure(x[:32], y[:32], info.classes, info.mean, info.std), trainer.step)


class Histograms(Callback):
    """Weight and gradient histograms every ``trainer.histogram_every`` epochs."""

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        every = trainer.cfg.trainer.histogram_every
        if trainer.tracker is not None and every and trainer.epoch % every == 0:
            trainer.tracker.log_histograms(trainer.strategy.unwrap(trainer.model), trainer.step)


MIN_WAIT_S = 0.25  # seconds of waiting in an epoch below which the share waited is not worth a warning


class DataWaitWarning(Callback):
    """Once per run, on the primary: most of an epoch went to waiting for batches. The share is the epoch's
    whole training time (every step, not one logging window), and the fix is a command to run as the run was
    started: its YAML file and overrides, read from the command line that started it."""

    def __init__(self, argv: list[str] | None = None):
        self.warned = False
        self.argv = argv  # None: sys.argv, read when the warning is due

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        from trainyard.data.workers import DATA_BOUND

        fraction = metrics.get("perf/data_wait_fraction", 0.0)
        # an epoch of a few milliseconds "waits" for its first batch most of the time: noise, not a finding
        if self.warned or fraction <= DATA_BOUND or trainer.last_epoch_wait_s < MIN_WAIT_S or not trainer.is_primary:
            return
        self.warned = True
        lc = trainer.loader_cfg
        pin = ", loader.pin_memory=true" if trainer.device.type == "cuda" and lc.pin_memory is False else ""
        wait = trainer.last_epoch_wait_s
        print(
            f"trainyard: warning: data-bound: the steps of epoch {trainer.epoch} waited for batches {wait:.1f} s of its "
            f"{wait / max(fraction, 1e-9):.1f} s of training ({fraction:.0%}, loader.num_workers={lc.num_workers}); "
            f"fix: {data_wait_fix(trainer.cfg, lc.num_workers, pin, sys.argv if self.argv is None else self.argv, trainer.run_dir)}",
            file=sys.stderr,
            flush=True,
        )


def started_as(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """(the YAML file, the overrides) of a ``trainyard train [RUN.yaml] [key=value ...]`` command line, or None
    when the process was not started that way (``trainyard.fit()``, a sweep, a resume, torchrun of a script)."""
    args = list(argv[1:])
    if not args or args[0] != "train" or "trainyard" not in argv[0]:
        return None
    rest, items = args[1:], []
    i = 0
    while i < len(rest):
        if rest[i] == "--resume" or rest[i].startswith("--resume="):
            return None  # a resumed run keeps its config.yaml: measure with that
        if rest[i].startswith("--"):
            i += 1
            continue
        items.append(rest[i])
        i += 1
    path = items[0] if items and "=" not in items[0] else None
    return path, [a for a in items if "=" in a and not a.startswith("loader.num_workers=")]


def data_wait_fix(cfg: Any, num_workers: int, pin: str, argv: list[str], run_dir: Any = None) -> str:
    """What to run: ``trainyard tune-workers run.yaml --write`` (then the same train command), or with the
    run's overrides and then ``loader.num_workers=auto`` (tune-workers stores its measurement for auto);
    started otherwise (a resume, a sweep): measure on the run folder's config.yaml."""
    import shlex

    if cfg.data.dataset == "python":  # trainyard.fit(): no YAML for tune-workers to measure and write
        return f"more workers (config={{'loader.num_workers': {max(2, num_workers * 2)}}}){pin}, or a lighter Dataset.__getitem__"
    started = started_as(argv)
    if started is None:
        config = shlex.quote(str(Path(run_dir) / "config.yaml")) if run_dir is not None else "RUN/config.yaml"
        return f"`trainyard tune-workers {config}`, then loader.num_workers=auto for the next run{pin}; or a lighter data.train_transforms"
    path, overrides = started
    words = " ".join(shlex.quote(a) for a in ([path] if path else []) + overrides)
    train = " ".join(shlex.quote(a) for a in ["trainyard", "train"] + ([path] if path else []) + overrides)
    if path is not None and cfg.loader.num_workers != "auto":
        return (
            f"`trainyard tune-workers {words} --write` (it sets loader.num_workers in {path}), then `{train}` again{pin}; "
            "or a lighter data.train_transforms"
        )
    return (
        f"`trainyard tune-workers{' ' + words if words else ''}`, then `{train} loader.num_workers=auto`{pin}; "
        "or a lighter data.train_transforms"
    )


# --- progress lines without a terminal -------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Every:
    """Due once per ``seconds`` on a clock: at ``start + seconds``, ``start + 2 * seconds``, ... A slow step that
    skips a beat makes one line, not a burst; ``seconds`` of 0 is never due."""

    def __init__(self, seconds: float, start: float):
        self.seconds = seconds
        self.next_at = start + seconds if seconds > 0 else math.inf

    def due(self, now: float) -> bool:
        if now < self.next_at:
            return False
        self.next_at += self.seconds * (1 + int((now - self.next_at) // self.seconds))
        return True


def progress_text(
    step: int,
    total_steps: int,
    epoch: int,
    epochs: int,
    batch: int,
    batches: int,
    samples_per_s: float | None,
    eta_epoch_s: float | None,
    eta_run_s: float | None,
    loss: float | None = None,
    loss_when: str | None = None,
) -> str:
    """One plain progress line: ``step 1200/9000  epoch 3/30 41%  412 samples/s  eta epoch 1m10s, run 25m03s  loss 0.4123 (step 1150)``;
    ``loss_when`` says where the loss was read (``step 1150``, ``epoch 2 mean``)."""
    parts = [f"step {step}/{total_steps}", f"epoch {epoch}/{epochs} {batch / max(batches, 1):.0%}"]
    if samples_per_s is not None:
        parts.append(f"{samples_per_s:,.0f} samples/s")
    if eta_epoch_s is not None and eta_run_s is not None:
        parts.append(f"eta epoch {format_seconds(eta_epoch_s)}, run {format_seconds(eta_run_s)}")
    if loss is not None:
        parts.append(f"loss {loss:.4f}" + (f" ({loss_when})" if loss_when else ""))
    return "progress: " + "  ".join(parts)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


class ProgressLines(Callback):
    """When stdout is not a terminal (nohup, CI, SLURM, a pipe), on the primary: one plain line every
    ``trainer.progress_every_s`` seconds of training, so a long epoch is not silent. It reads only what the
    loop already has on the host: the step counters, the clock, and the loss the loop last synced at a
    log step (``trainer.last_logged``, else the last epoch's mean). No host-device sync of its own."""

    def __init__(self, stream: Any = None, clock: Callable[[], float] = time.perf_counter):
        self.stream, self.clock = stream, clock
        self.timer: Every | None = None

    @property
    def steps_wanted(self) -> bool:
        """Off (a terminal, progress_every_s 0, not the primary): the loop drops this per-step hook at the run's start."""
        return self.timer is not None

    def on_run_start(self, trainer: Any) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        every = float(getattr(trainer.cfg.trainer, "progress_every_s", 30.0) or 0.0)
        if not trainer.is_primary or every <= 0 or _is_terminal(stream):
            self.timer = None
            return
        now = self.clock()
        self.timer = Every(every, now)
        self.run_start, self.run_start_step = now, trainer.step
        self.last_time, self.last_step = now, trainer.step
        self.epoch_start, self.epoch_start_step = now, trainer.step

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if self.timer is not None:
            self.epoch_start, self.epoch_start_step = self.clock(), trainer.step

    def on_step_end(self, trainer: Any, step: int, loss: Any) -> None:
        timer = self.timer
        if timer is None:
            return
        now = self.clock()
        if not timer.due(now):
            return
        print(self.line(trainer, step, now), file=self.stream if self.stream is not None else sys.stdout, flush=True)
        self.last_time, self.last_step = now, step

    def line(self, trainer: Any, step: int, now: float) -> str:
        t = trainer.cfg.trainer
        per_epoch = max(int(trainer.steps_per_epoch), 1)
        total = t.epochs * per_epoch if t.max_steps is None else min(t.epochs * per_epoch, t.max_steps)
        batches = len(trainer.train_loader)
        global_batch = trainer.cfg.loader.batch_size * t.accumulate * getattr(trainer.strategy, "world_size", 1)
        window = now - self.last_time
        rate = (step - self.last_step) * global_batch / window if window > 0 and step > self.last_step else None
        # the epoch's own pace for its remainder; the run's pace so far (validation included) for the run
        done_epoch, done_run = step - self.epoch_start_step, step - self.run_start_step
        eta_epoch = eta_run = None
        if done_epoch > 0 and done_run > 0:
            in_epoch = -(-trainer.batch_in_epoch // t.accumulate)  # optimizer steps of this epoch so far
            eta_epoch = max(per_epoch - in_epoch, 0) * (now - self.epoch_start) / done_epoch
            eta_run = max(total - step, 0) * (now - self.run_start) / done_run
        loss, when = last_synced_loss(trainer)
        return progress_text(
            step, total, trainer.epoch + 1, t.epochs, trainer.batch_in_epoch, batches, rate, eta_epoch, eta_run, loss, when
        )


def last_synced_loss(trainer: Any) -> tuple[float | None, str | None]:
    """The training loss the loop last read to the host, and where: the last log step's (``trainer.last_logged``,
    where the trainer keeps it: ``step N``), else the last finished epoch's mean (``epoch N mean``). Never a new sync."""
    logged = getattr(trainer, "last_logged", None)
    if isinstance(logged, dict) and isinstance(logged.get("train/loss"), float):
        at = logged.get("step")  # else the last log step: the trainer logs every log_every optimizer steps
        return logged["train/loss"], f"step {at if isinstance(at, int) else trainer.step - trainer.step % trainer.cfg.trainer.log_every}"
    history = getattr(trainer, "history", None)
    if history and isinstance(history[-1].get("train/loss"), float):
        return history[-1]["train/loss"], f"epoch {len(history)} mean"
    return None, None


# --- one line at the start for what the run chose on its own ------------------------------------------

HELD_OUT_OF_TRAIN = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")  # built-ins whose validation split is cut from train


def validation_text(size: int, fraction: float) -> str:
    """``validation: 6,000 held out of train (data.val_fraction=0.1)``."""
    return f"validation: {size:,} held out of train (data.val_fraction={fraction:g})"


def augmentation_text(dataset: str, transforms: list) -> str:
    """``augmentation: RandomAffine (the mnist default; data.train_transforms=[] for none)``."""
    names = ", ".join(next(iter(t)) if isinstance(t, dict) else str(t) for t in transforms)
    return f"augmentation: {names} (the {dataset} default; data.train_transforms=[] for none)"


def small_stem_text(name: str, image_size: Any) -> str:
    size = "x".join(map(str, image_size)) if image_size else "small"
    return (
        f"model.small_stem=auto -> on: {name} at {size} gets a 3x3 stride-1 stem without max-pooling "
        f"(16x the compute of the ImageNet stem at 32x32; model.small_stem=false keeps it)"
    )


def start_notes(trainer: Any) -> list[str]:
    """What the run chose on its own, one line each: the small ResNet stem under ``auto``, a built-in dataset's
    validation split cut out of train, its default augmentation. (``loader.num_workers=auto`` says its own.)"""
    cfg, notes = trainer.cfg, []
    plain = trainer.strategy.unwrap(trainer.model)
    conv, pool = getattr(plain, "conv1", None), getattr(plain, "maxpool", None)
    if (
        cfg.model.small_stem == "auto"
        and conv is not None
        and getattr(conv, "stride", None) == (1, 1)
        and isinstance(pool, torch.nn.Identity)
    ):
        notes.append(small_stem_text(cfg.model.name, getattr(trainer.data.info, "image_size", None)))
    if cfg.data.dataset in HELD_OUT_OF_TRAIN:
        if trainer.data.val is not None and len(trainer.data.val) and cfg.data.val_fraction > 0:
            notes.append(validation_text(len(trainer.data.val), cfg.data.val_fraction))
        if cfg.data.train_transforms is None:
            from trainyard.data.vision import DEFAULT_TRAIN_TRANSFORMS, DIGITS_TRAIN_TRANSFORMS

            default = DIGITS_TRAIN_TRANSFORMS if cfg.data.dataset == "digits" else DEFAULT_TRAIN_TRANSFORMS.get(cfg.data.dataset)
            if default:
                notes.append(augmentation_text(cfg.data.dataset, default))
    return notes


class StartNotes(Callback):
    """On the primary, once a run starts (not on a resume): :func:`start_notes`, each as ``trainyard: <note>``."""

    def on_run_start(self, trainer: Any) -> None:
        if not trainer.is_primary or trainer.step:
            return
        try:
            notes = start_notes(trainer)
        except Exception:  # a note is a courtesy: never the reason a run fails
            return
        for note in notes:
            print(f"trainyard: {note}", flush=True)


CALLBACKS = Registry("callback", "callbacks")
CALLBACKS.register("first_batch_pictures", FirstBatchPictures, "graph, watch and image grids of the first batch (always on)")
CALLBACKS.register("histograms", Histograms, "weight/gradient histograms every trainer.histogram_every epochs (always on)")
CALLBACKS.register("data_wait", DataWaitWarning, "one warning when an epoch is data-bound (always on)")
CALLBACKS.register(
    "progress_lines", ProgressLines, "a plain progress line every trainer.progress_every_s when stdout is not a terminal (always on)"
)
CALLBACKS.register("start_notes", StartNotes, "one line each at the start for what the run chose on its own (always on)")
BUILT_IN = ("first_batch_pictures", "histograms", "data_wait", "progress_lines", "start_notes")


def build_callbacks(specs: list, given: list | None = None, *, construct: bool = True) -> list[Any]:
    """The built-ins, then ``callbacks`` from the config (import paths, ``{path: {args}}``), then objects from Python.
    ``construct=False`` only resolves and checks them (before a run starts), building nothing."""
    out: list[Any] = [CALLBACKS.get(name)() for name in BUILT_IN] if construct else []
    for i, spec in enumerate(list(specs or []) + list(given or [])):
        where = f"callbacks[{i}]"
        args: dict = {}
        if isinstance(spec, dict):
            if len(spec) != 1:
                raise ConfigError(f"{where}: expected an import path or {{path: {{arg: value}}}}, got {spec}")
            ((spec, args),) = spec.items()
            args = args or {}
        obj = CALLBACKS.get(spec, key=f"{where}={spec}" if isinstance(spec, str) else where)
        where_named = f"{where}={spec}" if isinstance(spec, str) else f"{where} ({getattr(obj, '__name__', type(obj).__name__)})"
        cls = obj if isinstance(obj, type) else type(obj)
        typos = [n for n in dir(cls) if n.startswith("on_") and n not in HOOKS and hint(n, HOOKS)]
        if typos:  # on_epoch_ends: a hook misspelt would never be called
            raise ConfigError(f"{where_named}: {cls.__name__}.{typos[0]} is not a hook{hint(typos[0], HOOKS)}; hooks: {', '.join(HOOKS)}")
        if not any(callable(getattr(cls, hook, None)) for hook in HOOKS):
            raise ConfigError(f"{where_named}: {cls.__name__} has none of the hooks {', '.join(HOOKS)}")
        if isinstance(obj, type):
            if not construct:
                check_callback(obj, where_named, unbound=True)
                continue
            obj = call_with(obj, f"{where_named} args", args)
        elif args:
            raise ConfigError(f"{where_named}: arguments given, but it is not a class to construct")
        check_callback(obj, where_named)
        out.append(obj)
    return out
