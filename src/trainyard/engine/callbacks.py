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
import sys
from typing import Any

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
            raise ConfigError(f"{where}: {cls.__name__}.{hook}{inspect.signature(method)} must take (trainer{''.join(', ' + a for a in args)})") from None
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
            if isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point() and info.classes:  # what `trainyard preview` writes
                tracker.log_image("data/train_samples", samples_figure(x[:32], y[:32], info.classes, info.mean, info.std), trainer.step)


class Histograms(Callback):
    """Weight and gradient histograms every ``trainer.histogram_every`` epochs."""

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        every = trainer.cfg.trainer.histogram_every
        if trainer.tracker is not None and every and trainer.epoch % every == 0:
            trainer.tracker.log_histograms(trainer.strategy.unwrap(trainer.model), trainer.step)


MIN_WAIT_S = 0.25  # seconds of waiting in an epoch below which the share waited is not worth a warning


class DataWaitWarning(Callback):
    """Once per run, on the primary: most of an epoch went to waiting for batches."""

    def __init__(self):
        self.warned = False

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        from trainyard.data.workers import DATA_BOUND

        fraction = metrics.get("perf/data_wait_fraction", 0.0)
        # an epoch of a few milliseconds "waits" for its first batch most of the time: noise, not a finding
        if self.warned or fraction <= DATA_BOUND or trainer.last_epoch_wait_s < MIN_WAIT_S or not trainer.is_primary:
            return
        self.warned = True
        lc = trainer.loader_cfg
        pin = ", loader.pin_memory=true" if trainer.device.type == "cuda" and lc.pin_memory is False else ""
        if trainer.cfg.data.dataset == "python":  # trainyard.fit(): no YAML for tune-workers to measure and write
            fix = f"more workers (config={{'loader.num_workers': {max(2, lc.num_workers * 2)}}}){pin}, or a lighter Dataset.__getitem__"
        else:
            fix = f"`trainyard tune-workers RUN.yaml --write`{pin}, or a lighter data.train_transforms"
        print(
            f"trainyard: warning: data-bound: {fraction:.0%} of epoch {trainer.epoch} went to waiting for batches "
            f"(loader.num_workers={lc.num_workers}); fix: {fix}",
            file=sys.stderr, flush=True,
        )


CALLBACKS = Registry("callback", "callbacks")
CALLBACKS.register("first_batch_pictures", FirstBatchPictures, "graph, watch and image grids of the first batch (always on)")
CALLBACKS.register("histograms", Histograms, "weight/gradient histograms every trainer.histogram_every epochs (always on)")
CALLBACKS.register("data_wait", DataWaitWarning, "one warning when an epoch is data-bound (always on)")
BUILT_IN = ("first_batch_pictures", "histograms", "data_wait")


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
            (spec, args), = spec.items()
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
