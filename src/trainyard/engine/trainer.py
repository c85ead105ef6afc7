"""The step loop: train, validate each epoch, checkpoint, stop early, test with the best weights.

The task gives the loss, the metrics and the monitor; callbacks (built-in and the user's) do everything
else a run logs. The hot path makes no host-device sync: the loss and the task's statistic accumulate on
the device and are read (``.item()``) only every ``trainer.log_every`` optimizer steps and at epoch ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trainyard.config import RunConfig, flat_items, to_dict
from trainyard.data import DataBundle
from trainyard.data.loading import build_loader
from trainyard.devices import choose_threads, cuda_speedups, move, wants_channels_last
from trainyard.engine.callbacks import Callbacks, build_callbacks
from trainyard.engine.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    remove_unnamed_shards,
    resumed_batch,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from trainyard.engine.evaluate import EvalResult, evaluate
from trainyard.engine.memory import RankMemory
from trainyard.engine.optim import build_optimizer, build_scheduler, is_per_epoch, steps_per_epoch
from trainyard.engine.signals import StopSignals
from trainyard.engine.totals import RunningTotals
from trainyard.errors import ConfigError, Diverged, Interrupted  # noqa: F401 - Interrupted re-exported for callers of the trainer
from trainyard.parallel import Strategy
from trainyard.registry import hint
from trainyard.tasks import Task, build_task
from trainyard.track import Tracker

LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "perplexity")


def monitor_mode(metric: str, mode: str, task: Task | None = None) -> str:
    if mode != "auto":
        return mode
    if task is not None and metric == task.monitor:
        return task.monitor_mode
    leaf = metric.rsplit("/", 1)[-1]
    return "min" if any(word in leaf for word in LOWER_IS_BETTER) else "max"


class Trainer:
    """``task``, ``callbacks``, ``optimizer`` and ``scheduler`` may come from Python as objects (a Task, callback
    objects, an optimizer class or ``params -> Optimizer`` factory, a scheduler class or factory); otherwise the config names them."""

    def __init__(
        self,
        cfg: RunConfig,
        strategy: Strategy,
        data: DataBundle,
        model: nn.Module,
        run_dir: Path,
        tracker: Tracker | None,
        *,
        task: Task | None = None,
        callbacks: list | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        signals: StopSignals | None = None,
    ):
        self.cfg = cfg
        self.signals = signals  # the run's signal handling (run_process installs it for every phase); None: fit() installs its own
        self.strategy = strategy
        self.data = data
        self.run_dir = run_dir
        self.tracker = tracker if strategy.is_primary else None
        self.device = strategy.device
        t = cfg.trainer
        if t.keep_host_memory:
            from trainyard.engine.hostmem import keep_freed_host_memory

            keep_freed_host_memory()  # process-wide, once

        self.task = task if task is not None else build_task(cfg, data.info)
        self.callbacks = Callbacks([*build_callbacks(cfg.callbacks, callbacks), RankMemory()])  # RankMemory: per_rank in status.json
        self.speed_notes: list[str] = []  # what the start line names: threads, workers, compile, CUDA settings
        convnet = wants_channels_last(model, strategy.device, enabled=t.channels_last)
        self.channels_last = convnet and strategy.name in ("single", "dp", "ddp")  # fsdp shards dim 0 of each parameter
        if self.channels_last:  # before wrapping: DDP's buckets and dp's replicas take the parameters' layout
            model = model.to(memory_format=torch.channels_last)
        self.model = strategy.wrap(model)
        if getattr(strategy, "checkpointed_blocks", None):  # a user's Strategy may not set it
            self.speed_notes.append(f"activation checkpointing on {len(strategy.checkpointed_blocks)} blocks")
        self.compiled = None
        if t.compile is not False:
            from trainyard.engine.compile import CompiledForward

            self.compiled = CompiledForward(self.model, t.compile, strategy=strategy, warn=self._warn)
        self.optimizer = build_optimizer(self.model, cfg.optim, optimizer)
        self.loss_fn = self.task.criterion

        self.loader_cfg = self._resolve_workers()
        self.train_sampler = strategy.train_sampler(data.train, shuffle=cfg.loader.shuffle, seed=cfg.seed)
        if cfg.loader.bucket_by_length:  # batches of similar-length samples, regrouped from this rank's indices
            from trainyard.data.bucketing import LengthBucketBatchSampler, sample_lengths

            self.train_sampler = LengthBucketBatchSampler(
                self.train_sampler,
                sample_lengths(data.train),
                cfg.loader.batch_size,
                pool_batches=cfg.loader.bucket_pool,
                shuffle=cfg.loader.shuffle,
                drop_last=cfg.loader.drop_last,
                seed=cfg.seed,
            )
            self.train_loader = build_loader(
                data.train, self.loader_cfg, device=self.device, batch_sampler=self.train_sampler, train=True, collate_fn=data.collate_fn
            )
        else:
            self.train_loader = build_loader(
                data.train, self.loader_cfg, device=self.device, sampler=self.train_sampler, train=True, collate_fn=data.collate_fn
            )
        self.val_loader = self._eval_loader(data.val)
        self.test_loader = self._eval_loader(data.test)
        self._choose_threads()
        if len(self.train_loader) == 0:
            raise ConfigError(
                f"loader.batch_size={cfg.loader.batch_size}: larger than the {len(self.train_sampler)} training samples per device with "
                "loader.drop_last=true, so an epoch has no batch"
            )

        self.steps_per_epoch = steps_per_epoch(len(self.train_loader), t.accumulate)
        total = t.epochs * self.steps_per_epoch
        if t.max_steps is not None:
            total = min(total, t.max_steps)
        self.monitor = self._resolve_monitor()
        self.mode = monitor_mode(self.monitor, t.monitor_mode, self.task)
        self.total_steps = total
        self.scheduler = build_scheduler(
            self.optimizer,
            cfg.schedule,
            total_steps=total,
            steps_per_epoch=self.steps_per_epoch,
            max_lr=cfg.optim.lr,
            epochs=t.epochs,
            mode=self.mode,
            factory=scheduler,
        )
        self.schedule_per_epoch = is_per_epoch(cfg.schedule, self.scheduler)

        if t.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"trainer.precision=fp16: needs a CUDA device (training on {self.device.type}); use bf16 or 32")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        device_type = self.device.type
        self.autocast: Callable[[], Any] = (lambda: torch.autocast(device_type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device_type, enabled=t.precision == "fp16")

        self.best: float | None = None
        self.bad_epochs = 0
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self._first_batch_logged = False
        self.last_epoch_wait_s = 0.0  # seconds the last epoch waited for batches
        self.history: list[dict[str, float]] = []
        # trainer.on_nonfinite: what was seen non-finite, where (stop: checked where the loop reads the device anyway)
        self.check_nonfinite = t.on_nonfinite != "ignore"
        self.divergence: dict[str, Any] | None = None
        self._checked_step = 0  # the last optimizer step whose loss was read finite (a log step or an epoch end)
        self.best_epoch: int | None = None

    @property
    def is_primary(self) -> bool:
        return self.strategy.is_primary

    def metric_names(self) -> list[str]:
        """Every metric an epoch reports (what trainer.monitor may name)."""
        names = ["train/loss"] + ([f"train/{self.task.train_metric}"] if self.task.train_metric else [])
        if self.val_loader is not None:
            names += [f"val/{n}" for n in self.task.metric_names()]
        return names

    def _resolve_monitor(self) -> str:
        t = self.cfg.trainer
        monitor = self.task.monitor if t.monitor == "auto" else t.monitor
        if self.val_loader is None and monitor.startswith("val/"):
            return "train/loss"  # no validation split: the training loss picks best.pt
        known = self.metric_names()
        if monitor not in known and not any(monitor.startswith(k + "/") for k in known):  # val/f1/3: one class of average=none
            raise ConfigError(
                f"trainer.monitor={t.monitor}: not a metric this run reports; it reports {', '.join(known)}{hint(monitor, known)}"
            )
        return monitor

    def _eval_loader(self, dataset):
        if dataset is None or len(dataset) == 0:
            return None
        sampler = self.strategy.eval_sampler(dataset)
        return build_loader(dataset, self.loader_cfg, device=self.device, sampler=sampler, train=False, collate_fn=self.data.collate_fn)

    def _warn(self, line: str) -> None:
        if self.strategy.is_primary:
            print(line, file=sys.stderr, flush=True)

    def _choose_threads(self) -> None:
        """CPU threads and loader workers together (trainer.cpu_threads), and the CUDA settings, named for the start line."""
        from trainyard.devices import cpu_count

        t = self.cfg.trainer
        workers = getattr(self.train_loader, "num_workers", 0)  # the batched loader has none
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", self.strategy.processes))
        threads = choose_threads(t.cpu_threads, cores=cpu_count(), processes=processes, workers=workers)
        self.speed_notes.append(f"threads {threads}, workers {workers}")
        if self.compiled is not None:
            self.speed_notes.append(self.compiled.describe())
        self.speed_notes += cuda_speedups(self.device, enabled=t.cuda_defaults, deterministic=t.deterministic)
        if self.channels_last:
            self.speed_notes.append("channels_last")
        if getattr(self.train_loader, "pin", getattr(self.train_loader, "pin_memory", False)):  # the batched loader: pin
            self.speed_notes.append("pin_memory")

    def _resolve_workers(self):
        """``loader.num_workers: auto`` becomes the stored measurement (or a heuristic); the log says which."""
        from trainyard.data.workers import resolve_auto

        workers, source = resolve_auto(self.cfg)
        if self.cfg.loader.num_workers == "auto" and self.strategy.is_primary:
            print(f"trainyard: loader.num_workers=auto -> {workers}: {source}", flush=True)
        return dataclasses.replace(self.cfg.loader, num_workers=workers)

    # --- checkpoints -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Collective: every rank calls it (a strategy may gather shards); only the primary's copy is complete.
        Callbacks' ``on_checkpoint_save`` may add entries of their own."""
        shards = self.strategy.sharded_state(self.model, self.optimizer)  # fsdp: each rank's part, saved by every rank
        rng = rng_state()
        state = {
            **(
                {"shards": shards}
                if shards is not None
                else {"model": self.strategy.model_state_dict(self.model), "optimizer": self.strategy.optimizer_state_dict(self.optimizer)}
            ),
            "world_size": self.strategy.world_size,  # with config's loader.batch_size: where in the epoch, at another world size
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "step": self.step,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "monitor": self.monitor,
            "rng": rng,
            # every process's own stream (dropout, augmentation): with rank 0's alone, every rank would draw its numbers
            "rng_per_process": self.strategy.gather_object(rng),
            "config": to_dict(self.cfg),
            "data_info": info_record(self.data.info),  # what trainyard.load() rebuilds the model from
        }
        self.callbacks.call("on_checkpoint_save", self, state)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("sharded"):  # a folder of per-rank parts: every rank reads what it holds
            self.strategy.load_sharded_state(self.model, self.optimizer, state["sharded"])
        else:
            self.strategy.load_model_state_dict(self.model, state["model"])
            self.strategy.load_optimizer_state_dict(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        fit_schedule_length(self.scheduler, self.cfg, self.total_steps)
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch"], state["step"]
        self.batch_in_epoch, moved = resumed_batch(state, self.cfg.loader.batch_size, self.strategy.world_size)
        if moved and self.is_primary:
            print(f"trainyard: {moved}", flush=True)
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        streams = state.get("rng_per_process") or [state["rng"]]
        if len(streams) == self.strategy.processes:
            set_rng_state(streams[self.strategy.process_index])
        elif self.strategy.is_primary:
            set_rng_state(state["rng"])  # another process count: the others keep the per-rank seeds of this start
        self._first_batch_logged = True
        self.callbacks.call("on_checkpoint_load", self, state)

    def save(self, name: str, *, also: str | None = None) -> None:
        """Collective: every rank calls it, the primary writes ``name`` (and ``also``, the same state, as a link)."""
        state = self.state()
        shards = state.pop("shards", None)
        if shards is not None:
            save_sharded_checkpoint(self.run_dir / "checkpoints", name, state, shards, self.strategy, also=also)  # collective
            return
        if self.strategy.is_primary:
            folder = self.run_dir / "checkpoints"
            save_checkpoint(folder / name, state)
            if also is not None:
                link_checkpoint(folder / name, folder / also)
            remove_unnamed_shards(folder)  # a sharded checkpoint this one replaced (a run resumed from fsdp)
        self.strategy.barrier()

    # --- signals -----------------------------------------------------------------------
    @property
    def _stop_signal(self) -> int | None:
        return self.signals.received if self.signals is not None else None

    @contextlib.contextmanager
    def _signals(self):
        own = self.signals is None
        if own:
            self.signals = StopSignals().install()
            self.signals.run_dir = self.run_dir
        try:
            yield self.signals
        finally:
            if own:
                self.signals.restore()
                self.signals = None

    def _test_stopped(self) -> str:
        return (
            f"training is finished and saved in {self.run_dir / 'checkpoints' / 'last.pt'}; the test was stopped; "
            f"run it with: trainyard train --resume {self.run_dir}"
        )

    # --- the loop ----------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        t = self.cfg.trainer
        primary = self.strategy.is_primary
        self._checked_step = self.step  # a resumed run's steps so far were finite
        with self._signals() as signals, signals.deferred("training"):
            self.callbacks.call("on_run_start", self)
            while self.epoch < t.epochs and not self._done_steps():
                start = time.perf_counter()
                self.callbacks.call("on_epoch_start", self, self.epoch)
                train_metrics = self.train_epoch()
                if self.divergence is not None:
                    self._diverged()  # raises: nothing saved from these weights, no test
                stop = self._stop_agreed()
                if stop and self.batch_in_epoch < len(self.train_loader):
                    self.save("last.pt")  # stopped mid-epoch: resume skips the batches already trained on
                    raise Interrupted(self._stop_signal, self.run_dir)
                metrics = dict(train_metrics)
                if self.val_loader is not None:
                    metrics.update(self._evaluate(self.val_loader, "val").metrics)
                    val_loss = metrics.get("val/loss")
                    if (
                        t.on_nonfinite == "stop" and val_loss is not None and not math.isfinite(val_loss)
                    ):  # skip_step: bad samples are expected
                        self.divergence = {
                            "what": f"the validation loss is {val_loss}",
                            "step": self.step,
                            "epoch": self.epoch + 1,
                            "validation": True,
                        }
                        self._diverged()
                    self.callbacks.call("on_validation_end", self, metrics)
                metrics["time/epoch_s"] = time.perf_counter() - start
                improved = self._update_best(metrics)
                if improved:
                    self.best_epoch = self.epoch + 1
                if self.schedule_per_epoch:
                    self._step_schedule_per_epoch(metrics)
                self.epoch += 1
                self.batch_in_epoch = 0
                self.history.append(metrics)
                self.callbacks.call("on_epoch_end", self, metrics)
                if primary:
                    self._log_epoch(metrics)
                self.save("last.pt", also="best.pt" if improved else None)
                if stop or self._stop_agreed():  # also a signal that came during validation or the save
                    raise Interrupted(self._stop_signal, self.run_dir)
                if t.patience and self.bad_epochs >= t.patience:
                    if primary:
                        print(f"early stopping: {self.monitor} has not improved for {t.patience} epochs (best {self.best:.4f})", flush=True)
                    break
            with signals.immediate("test", self._test_stopped):
                return self.finish()

    def _step_schedule_per_epoch(self, metrics: dict[str, float]) -> None:
        from trainyard.engine.optim import PLATEAU

        if isinstance(self.scheduler, PLATEAU):
            value = metrics.get(self.monitor)
            if value is not None and math.isfinite(value):
                self.scheduler.step(value)
        else:
            self.scheduler.step()

    def _stop_agreed(self) -> bool:
        """Whether a stop signal arrived (or a rank saw a non-finite loss), agreed by every rank: a signal can reach
        ranks at different steps, and ranks that stop apart would wait on each other's collectives forever."""
        if not self.strategy.any_rank(
            self._stop_signal is not None or self.divergence is not None
        ):  # sync point: at log steps and epoch ends only
            return False
        if self.check_nonfinite and self.strategy.any_rank(self.divergence is not None):  # only once a rank stops: which reason
            if self.divergence is None:  # another rank saw it (under ddp its gradients reach every rank)
                self.divergence = {
                    "what": "the training loss is non-finite on another rank",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "first": self._checked_step + 1,
                }
            return True
        if self._stop_signal is None:
            self.signals.received = signal.SIGTERM  # another rank was signalled
        return True

    def _diverged(self) -> None:
        """Raise :class:`Diverged` with one line: what, where, the likely cause, what was kept."""
        d = self.divergence or {}
        cfg, t = self.cfg, self.cfg.trainer
        where = f"at step {d.get('step')} (epoch {d.get('epoch')}"
        first = d.get("first")
        if first is not None and first < d.get("step", 0):
            where += f"; first non-finite in steps {first}-{d['step']}, read every trainer.log_every={t.log_every} steps and at epoch ends"
        where += ")"
        causes = []
        if t.precision == "fp16":
            causes.append("an fp16 overflow (try trainer.precision=bf16 or 32)")
        if not d.get("validation"):
            causes.append(
                f"a learning rate too high (optim.name={cfg.optim.name} optim.lr={cfg.optim.lr:g}; lower it or set trainer.clip_grad_norm)"
            )
        causes.append(
            "nan/inf input values in the data" + ("" if d.get("validation") else " (trainer.on_nonfinite=skip_step skips such steps)")
        )
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.best is not None and best.exists():
            kept = f"kept {best}{f' from epoch {self.best_epoch}' if self.best_epoch else ''} ({self.monitor} {self.best:.4g})"
        else:
            kept = "no checkpoint saved"
        raise Diverged(
            f"diverged: {d.get('what', 'a non-finite value')} {where}; likely cause: {', or '.join(causes)}; {kept}; test skipped"
        )

    def _done_steps(self) -> bool:
        return self.cfg.trainer.max_steps is not None and self.step >= self.cfg.trainer.max_steps

    def _update_best(self, metrics: dict[str, float]) -> bool:
        if self.monitor not in metrics and self.best is None and self.cfg.trainer.monitor == "auto":
            # e.g. a model that returns only its loss has no accuracy to monitor: its loss picks best.pt
            fallback = "val/loss" if "val/loss" in metrics else "train/loss"
            if self.is_primary:
                print(
                    f"trainyard: {self.monitor} is not reported (the model returns no predictions); monitoring {fallback}",
                    file=sys.stderr,
                    flush=True,
                )
            self.monitor, self.mode = fallback, "min"
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            self.bad_epochs += 1
            return False
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return better

    def train_epoch(self) -> dict[str, float]:
        cfg, t = self.cfg, self.cfg.trainer
        model, optimizer, scheduler, scaler = self.model, self.optimizer, self.scheduler, self.scaler
        strategy, device, loss_fn, autocast = self.strategy, self.device, self.loss_fn, self.autocast
        accumulate, clip, log_every = t.accumulate, t.clip_grad_norm, t.log_every
        processes = strategy.processes

        model.train()
        self.train_sampler.set_epoch(self.epoch)
        # Worker seeds (and so augmentations) are a function of (seed, rank, epoch): resumable, and different per rank.
        self.train_loader.generator.manual_seed(cfg.seed * 1_000_003 + strategy.rank * 10_007 + self.epoch)
        if self.batch_in_epoch:  # resuming mid-epoch: skip what was already trained on
            self.train_sampler.skip = self.batch_in_epoch * cfg.loader.batch_size

        if accumulate > 1:
            scale = lambda loss: scaler.scale(loss / accumulate)  # noqa: E731
        else:
            scale = scaler.scale if scaler.is_enabled() else (lambda loss: loss)

        task = self.task
        # no per-step kernels: losses summed at log steps, the task's statistic over the outputs every few dozen steps
        totals = RunningTotals(device, stat=task.train_stat if task.train_metric else None, stat_dtype=task.stat_dtype)
        add_totals = totals.add
        # trainer.on_nonfinite=skip_step: a step's losses wait for the (synced) finite check before they count
        skip_nonfinite = t.on_nonfinite == "skip_step"
        pending: list = []
        skipped = 0
        # a skipped step's forward still moved the running statistics (batch norm): kept aside, put back on a skip
        buffers = [b for b in model.buffers() if b.numel()] if skip_nonfinite else []
        kept_buffers: list = []
        step_hooks = self.callbacks.step_end
        per_step_schedule = not self.schedule_per_epoch
        forward_backward = strategy.forward_backward
        if self.compiled is not None and self.compiled.active:
            forward_backward = self.compiled.wrap(forward_backward)  # the compiled model; eager after a failure
        channels_last = self.channels_last
        scaler_enabled = scaler.is_enabled()
        total_batches = len(self.train_loader)
        epoch_start = time.perf_counter()
        log_state = {"time": epoch_start, "seen": 0, "loss": 0.0, "wait": 0.0}
        wait = 0.0
        progress = self._progress(total_batches)

        # The loop body runs every step: what it does besides the step itself is kept to a few local operations
        # (measured: Python between the model's kernels costs several times its own time in a tiny model).
        it = iter(self.train_loader)
        batch_index = self.batch_in_epoch
        step = self.step
        last_step = math.inf if t.max_steps is None else t.max_steps
        log_first = not self._first_batch_logged
        perf_counter = time.perf_counter
        micro = 0
        while True:
            t0 = perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            wait += perf_counter() - t0
            x = x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else move(x, device)
            y = y.to(device, non_blocking=True)
            if channels_last and x.__class__ is torch.Tensor and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if log_first:
                log_first = False
                self._first_batch_logged = True
                self.callbacks.call("on_first_batch", self, x, y)
            if micro == 0:
                # Cleared before the step rather than after it, so the last step's gradients stay for the histograms.
                optimizer.zero_grad(set_to_none=True)
                if buffers:
                    kept_buffers = [b.detach().clone() for b in buffers]
            batch_index += 1
            micro += 1
            sync = micro == accumulate or batch_index == total_batches
            if sync:
                loss, logits = forward_backward(model, x, y, loss_fn, autocast, scale)
            else:
                with strategy.no_sync(model):
                    loss, logits = forward_backward(model, x, y, loss_fn, autocast, scale)
            if skip_nonfinite:
                pending.append((loss, y, logits))
            else:
                add_totals(loss, y, logits)
            if sync:
                micro = 0
                if skip_nonfinite and self._skip_nonfinite(pending, add_totals):  # sync point: skip_step only
                    skipped += 1  # no update from this step's gradients (they are cleared before the next one)
                    with torch.no_grad():
                        for buffer, kept in zip(buffers, kept_buffers):
                            buffer.copy_(kept)
                else:
                    if clip is not None:
                        scaler.unscale_(optimizer)
                        strategy.clip_grad_norm(model, clip)
                    if scaler_enabled:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                if per_step_schedule:
                    scheduler.step()
                step += 1
                self.step, self.batch_in_epoch = step, batch_index
                if step_hooks:
                    for hook in step_hooks:
                        hook(self, step, loss)
                if step % log_every == 0:
                    self._log_train(totals, wait, log_state, progress)  # sync point: .item() every log_every steps
                    if self.divergence is not None and processes == 1:  # a non-finite loss read there (ranks: _stop_agreed)
                        break
                if step >= last_step:
                    break
                if processes == 1:
                    if self._stop_signal is not None:
                        break
                elif step % log_every == 0 and self._stop_agreed():  # ranks agree where they sync anyway
                    break
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()

        totals.fold()
        counts = torch.tensor([float(totals.seen), float(totals.stat_count)], device=device)
        parts = [torch.stack([totals.loss_sum.float(), totals.stat_sum.float()]), counts]
        if self.check_nonfinite:  # the weights this epoch leaves, checked in the same read (last.pt/best.pt never hold nan/inf)
            parts.append(self._nonfinite_tensors().reshape(1))
        reduced = strategy.all_reduce_sum(torch.cat(parts))
        loss_total, stat_total, seen_total, stat_count, *bad_tensors = reduced.tolist()  # sync point: once per epoch
        if self.check_nonfinite and self.divergence is None:
            if not math.isfinite(loss_total):
                self.divergence = {
                    "what": f"the training loss is {loss_total}",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "first": self._checked_step + 1,
                }
            elif bad_tensors and bad_tensors[0]:
                self.divergence = {
                    "what": f"the weights hold nan/inf ({int(bad_tensors[0])} tensors)",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "first": self._checked_step + 1,
                }
            elif skip_nonfinite and seen_total == 0:
                self.divergence = {
                    "what": "every step's loss was non-finite (all skipped)",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "validation": True,
                }
            self._checked_step = self.step
        metrics = {"train/loss": loss_total / max(seen_total, 1), "lr": optimizer.param_groups[0]["lr"]}
        if skip_nonfinite:
            metrics["train/skipped_steps"] = float(skipped)
            if skipped and self.is_primary:
                print(
                    f"trainyard: epoch {self.epoch + 1}: skipped {skipped} optimizer step{'s' if skipped > 1 else ''} with a non-finite "
                    "loss (trainer.on_nonfinite=skip_step)",
                    file=sys.stderr,
                    flush=True,
                )
        if task.train_metric and stat_count:
            metrics[f"train/{task.train_metric}"] = stat_total / stat_count
        metrics["perf/data_wait_fraction"] = min(wait / max(time.perf_counter() - epoch_start, 1e-9), 1.0)
        self.last_epoch_wait_s = wait
        return metrics

    @torch.no_grad()
    def _nonfinite_tensors(self) -> torch.Tensor:
        """How many of this process's floating-point parameters and buffers hold a nan or inf, on ``self.device``
        (no host sync: read with the epoch-end reduction)."""
        tensors = (
            p.to_local() if hasattr(p, "to_local") else p for p in itertools.chain(self.model.parameters(), self.model.buffers())
        )  # fsdp: this rank's shard
        flags = [torch.isfinite(p).all().logical_not().to(self.device) for p in tensors if p.is_floating_point() and p.numel()]
        return torch.stack(flags).sum().float() if flags else torch.zeros((), device=self.device)

    def _skip_nonfinite(self, pending: list, add_totals: Callable) -> bool:
        """trainer.on_nonfinite=skip_step, at an optimizer step: True when a micro-batch loss of it is non-finite
        (on any rank), and the step is to be skipped; else its losses go into the totals. One host sync a step."""
        bad = not bool(torch.isfinite(torch.stack([loss.detach().float().reshape(()) for loss, _, _ in pending])).all())  # sync point
        if self.strategy.processes > 1:
            bad = self.strategy.any_rank(bad)  # every rank skips the same step (its gradients were averaged)
        if not bad:
            for item in pending:
                add_totals(*item)
        pending.clear()
        return bad

    def _progress(self, total: int):
        t = self.cfg.trainer
        if not self.strategy.is_primary:
            return None
        show = sys.stderr.isatty() if t.progress == "auto" else bool(t.progress)
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True)

    def _log_train(self, totals: RunningTotals, wait: float, state: dict, progress) -> None:
        now = time.perf_counter()
        totals.fold_losses()
        loss_now = totals.loss_sum.item()
        if self.check_nonfinite and self.divergence is None:
            if math.isfinite(loss_now):
                self._checked_step = self.step
            else:  # the sum over the epoch so far: the first non-finite loss lies in the steps since the last read
                self.divergence = {
                    "what": f"the training loss is {loss_now}",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "first": self._checked_step + 1,
                }
        seen = totals.seen
        window = seen - state["seen"]
        elapsed = max(now - state["time"], 1e-9)
        metrics = {
            "train/loss": (loss_now - state["loss"]) / max(window, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "perf/samples_per_s": window * self.strategy.world_size / elapsed,
            "perf/data_wait_fraction": min((wait - state["wait"]) / elapsed, 1.0),
        }
        state.update(time=now, seen=seen, loss=loss_now, wait=wait)
        self.last_logged = {**metrics, "step": self.step}  # what progress lines show: read here, no sync of their own
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, self.step, self.epoch)
        if progress is not None:
            progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", samples_s=f"{metrics['perf/samples_per_s']:.0f}", refresh=False)

    def _evaluate(self, loader, prefix: str, collector: Any = None) -> EvalResult:
        return evaluate(self.model, loader, self.strategy, prefix=prefix, task=self.task, autocast=self.autocast, collector=collector)

    def _log_epoch(self, metrics: dict[str, float]) -> None:
        t = self.cfg.trainer
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, self.step, self.epoch - 1)
            groups = {}
            for name in ["loss"] + ([self.task.train_metric] if self.task.train_metric else []):
                group = {split: metrics[f"{split}/{name}"] for split in ("train", "val") if f"{split}/{name}" in metrics}
                if group:
                    groups[f"epoch/{name}"] = group
            self.tracker.log_groups(groups, self.epoch)
            self.tracker.flush()  # once an epoch, whatever the clocks say: a long validation leaves nothing unwritten
        parts = [f"epoch {self.epoch}/{t.epochs}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("train/", "val/"))]
        parts.append(f"{metrics['time/epoch_s']:.1f}s")
        print("  ".join(parts), flush=True)

    def finish(self) -> dict[str, float]:
        """Test with the best checkpoint; log final metrics, hparams and pictures."""
        primary = self.strategy.is_primary
        final = dict(self.history[-1]) if self.history else {}
        final.pop("time/epoch_s", None)
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if self.test_loader is not None:
            if best_path.exists():
                best = load_checkpoint(best_path, weights=False)
                if best.get("sharded"):
                    self.strategy.load_sharded_state(self.model, None, best["sharded"])
                else:
                    self.strategy.load_model_state_dict(self.model, best["model"])
            # the same on every rank (the collector's reduction is collective); only the primary keeps images
            collect = self.cfg.track.images and self.task.figures
            collector = self.task.collector(32 if primary and self.tracker is not None else 0) if collect else None
            result = self._evaluate(self.test_loader, "test", collector)
            final.update(result.metrics)
            if self.tracker is not None:
                self.tracker.log_metrics(result.metrics, self.step, self.epoch)
                if collector is not None:
                    from trainyard.track.figures import render

                    for tag, kind, picture in collector.pictures():
                        image, figure = render(kind, picture)
                        if figure is not None:
                            self.tracker.log_figure(tag, figure, self.step)
                        else:
                            self.tracker.log_image(tag, image, self.step)
        if self.best is not None:
            final[f"best/{self.monitor}"] = self.best
        if self.tracker is not None:
            hparam_metrics = {k: v for k, v in final.items() if k.startswith(("test/", "val/", "best/"))}
            if self.best is not None and f"best/{self.monitor}" in hparam_metrics:
                self.tracker.log_metrics({f"best/{self.monitor}": self.best}, self.step, self.epoch)
            self.tracker.log_hparams(hparams_of(self.cfg), hparam_metrics)
        self.callbacks.call("on_run_end", self, final)
        return final


def fit_schedule_length(scheduler: Any, cfg: RunConfig, total_steps: int) -> None:
    """A resume that changed the run's length (trainer.epochs, trainer.max_steps) against the schedule the checkpoint
    holds, laid out for the old length: a cosine decays from where it is to its end at the new last step (its
    recursive form telescopes there); a one-cycle cannot be stretched, and would fail at its old end."""
    main = getattr(scheduler, "trainyard_main", scheduler)
    warmup = min(cfg.schedule.warmup_steps, max(total_steps - 1, 0))
    if isinstance(main, torch.optim.lr_scheduler.CosineAnnealingLR) and cfg.schedule.name == "cosine":
        main.T_max = max(total_steps - warmup, 1)
    elif isinstance(main, torch.optim.lr_scheduler.OneCycleLR) and main.total_steps < total_steps:
        raise ConfigError(
            f"trainer.epochs={cfg.trainer.epochs}: schedule.name={cfg.schedule.name} was laid out over {main.total_steps} "
            "optimizer steps when the run started, and a one-cycle schedule cannot be lengthened on resume; "
            "keep the run's length, or start a new run"
        )


def info_record(info: Any) -> dict[str, Any]:
    """The data's facts a model constructor may take, as plain values a weights-only checkpoint holds."""
    keep = (
        "kind",
        "num_classes",
        "classes",
        "in_channels",
        "image_size",
        "mean",
        "std",
        "vocab_size",
        "pad_id",
        "in_features",
        "target_shape",
        "num_outputs",
    )
    return {k: getattr(info, k) for k in keep}


def hparams_of(cfg: RunConfig) -> dict[str, Any]:
    """The config as flat scalar hyperparameters (the HParams dashboard takes bool, int, float, str)."""
    out: dict[str, Any] = {}
    for key, value in flat_items(cfg).items():
        if key.startswith("track.") or key == "name":
            continue
        if value is None:
            value = "null"
        elif isinstance(value, (list, dict)):
            value = str(value)
        out[key] = value
    return out
