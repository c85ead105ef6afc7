"""``train(cfg)``: build everything, run the loop, always clean up."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainyard.config import RunConfig
from trainyard.devices import seed_everything  # noqa: F401 - re-exported: the doctor and benchmarks seed like a run
from trainyard.errors import ConfigError


@dataclass
class UserParts:
    """What the Python API hands a run as objects instead of config names. Under ``ddp`` and ``pipeline``
    each process gets a pickled copy."""

    model: Any = None
    datasets: dict | None = None  # {"train": ..., "val": ..., "test": ...}
    task: Any = None
    loss: Any = None
    metrics: Any = None
    optimizer: Any = None
    scheduler: Any = None
    callbacks: list = field(default_factory=list)
    collate_fn: Any = None  # the loader's collate for the datasets given (loader.collate still overrides)


def check_names(cfg: RunConfig, parts: UserParts | None = None) -> None:
    """Resolve every name and import path of the config (importing the user's modules) before anything runs:
    a typo is one line here, not a traceback in a spawned process."""
    from trainyard.data import DATASETS, PYTHON
    from trainyard.engine.callbacks import build_callbacks
    from trainyard.engine.optim import optimizer_factory, schedule_factory
    from trainyard.models import MODELS
    from trainyard.parallel import strategy_class
    from trainyard.tasks import build_loss, parse_metrics, task_class

    parts = parts or UserParts()
    strategy_class(cfg.parallel.strategy)
    if cfg.parallel.activation_checkpointing and cfg.parallel.strategy in ("dp", "model", "pipeline"):
        raise ConfigError(
            f"parallel.activation_checkpointing=true: not under parallel.strategy={cfg.parallel.strategy}; "
            "use single, ddp or fsdp, or set it to false"
        )
    if parts.task is None:
        task_class(cfg.task.name)
    if parts.loss is None and cfg.task.loss is not None:
        build_loss(cfg.task.loss, cfg.task.loss_args)
    if parts.metrics is None:
        parse_metrics(cfg.task.metrics)
    optimizer_factory(cfg.optim, parts.optimizer)
    schedule_factory(cfg.schedule, parts.scheduler)
    build_callbacks(cfg.callbacks, parts.callbacks, construct=False)
    if parts.model is None:
        MODELS.get(cfg.model.name)
    if parts.datasets is None and cfg.data.dataset != PYTHON:
        DATASETS.get(cfg.data.dataset)


# What a resume may change: how long it goes on, what it logs and how it loads. Every other key built what the
# checkpoint holds (the model's shapes, the optimizer's state, the data order), so changing it would not continue
# the run but start another one on top of it.
RESUMABLE = (
    "name",
    "callbacks",
    "track.",
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.patience",
    "trainer.log_every",
    "trainer.histogram_every",
    "trainer.progress",
    "trainer.progress_every_s",
    "trainer.keep_host_memory",
    "trainer.on_nonfinite",
    "trainer.device",
    "trainer.deterministic",
    "trainer.compile",
    "trainer.cpu_threads",
    "trainer.cuda_defaults",
    "trainer.channels_last",
    "loader.num_workers",
    "loader.pin_memory",
    "loader.persistent_workers",
    "loader.prefetch_factor",
    "loader.eval_batch_size",
    "loader.batched",
    "data.root",
    "data.download",
    # a checkpoint moves between strategies and world sizes (the global batch kept by loader.batch_size)
    "parallel.",
    "loader.batch_size",
)


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def check_resume_config(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse, before anything is written, a resume whose config differs from the run's own where the checkpoint
    was built from it: one line naming each such key, its new and its trained value, and what may change."""
    from trainyard.config import flat_items, load_config

    saved = flat_items(load_config(run_dir / "config.yaml"))
    changed = [(k, v, saved.get(k)) for k, v in flat_items(cfg).items() if v != saved.get(k) and not resumable(k)]
    if changed:
        shown = ", ".join(f"{k}={v} (trained with {old})" for k, v, old in changed)
        allowed = ", ".join(k.rstrip(".") + ("*" if k.endswith(".") else "") for k in RESUMABLE if k != "name")
        raise ConfigError(
            f"--resume {run_dir}: {shown} cannot change on resume: the checkpoint was built with the "
            f"trained value; a resume may change {allowed}; start a new run for the others"
        )


def train(cfg: RunConfig, resume: str | Path | None = None, parts: UserParts | None = None) -> dict[str, float]:
    """Train one run (in every process the strategy launches); returns the primary's final metrics."""
    from trainyard.data.loading import check_loader_config
    from trainyard.engine.compile import check_compile
    from trainyard.parallel import build_strategy
    from trainyard.parallel.launch import launcher_env
    from trainyard.track import check_backends
    from trainyard.track.rundir import check_free

    if resume is not None:
        check_resume_config(Path(resume), cfg)
        if launcher_env() is None:  # the process that starts the ranks: a folder in use is refused before any starts
            check_free(resume)
    check_backends(cfg.track.backends)
    check_loader_config(cfg.loader)
    check_compile(cfg)
    check_names(cfg, parts)
    strategy = build_strategy(cfg)
    return strategy.launch(run_process, cfg, str(resume) if resume is not None else None, parts)


def batch_text(cfg: RunConfig, strategy) -> str:
    """What loader.batch_size means here: per device; the global batch counts every process and accumulation step."""
    b, world, accumulate = cfg.loader.batch_size, strategy.world_size, cfg.trainer.accumulate
    parts = [str(b)] + ([f"{world} processes"] if world > 1 else []) + ([f"{accumulate} accumulation steps"] if accumulate > 1 else [])
    return f"loader.batch_size {b} per device, global batch {b * world * accumulate}" + (
        f" = {' x '.join(parts)}" if len(parts) > 1 else ""
    )


def run_process(strategy, cfg: RunConfig, resume: str | None, parts: UserParts | None = None) -> dict[str, float]:
    """The body of one training process."""
    import contextlib
    import shutil

    from trainyard.data import DATASETS, build_data
    from trainyard.engine.checkpoint import load_checkpoint
    from trainyard.engine.signals import StopSignals
    from trainyard.engine.trainer import Trainer
    from trainyard.errors import CANNOT_WRITE, CheckpointError, Interrupted, TrainyardError, write_error
    from trainyard.models import build_model
    from trainyard.tasks import build_task, summary_text
    from trainyard.track import build_trackers
    from trainyard.track.rundir import cut_rows_after, cut_torn_tail, environment, lock_run_dir, new_run_dir, write_config, write_status

    # SIGINT/SIGTERM in every phase, from here to the last status write: at once in set-up, at the next safe
    # point while training (last.pt saved), at once in the test, and not at all while the record is written.
    signals = StopSignals().install()
    tracker = None
    trainer = None
    run_dir: Path | None = Path(resume) if resume is not None else None
    lock = None
    created = False  # this process made the run folder
    recording = False  # whether this process has written into the run folder: until then a failure leaves it as it was
    status, reason = "failed", None
    trained = False
    started = time.time()

    def setup_stopped() -> str:
        if resume is not None:
            return f"stopped during set-up; {resume} is as it was; resume with: trainyard train --resume {resume}"
        return (
            "stopped during set-up: nothing was trained"
            + (f"; removed {run_dir}" if created else "")
            + "; start it again with the same command"
        )

    try:
        with signals.immediate("set-up", setup_stopped):
            strategy.setup()
            if cfg.trainer.deterministic:
                torch.use_deterministic_algorithms(True)
                torch.backends.cudnn.benchmark = False
            seed_everything(cfg.seed)  # the same initial weights on every rank
            if resume is None:
                resume = strategy.resume_dir()  # a job its launcher restarted continues its run folder
                run_dir = Path(resume) if resume is not None else None
            if resume is not None and strategy.is_primary:
                lock = lock_run_dir(resume)  # one writer per run folder: refused, with nothing changed, while another trains in it
            parts = parts or UserParts()
            if parts.model is not None and strategy.processes > 1:
                # A spawned process's model arrived through torch.multiprocessing, whose pickling puts CPU tensors in
                # shared memory: every rank (and the caller) would hold the same parameters, each step applied N times.
                parts = dataclasses.replace(parts, model=copy.deepcopy(parts.model))
            data = build_data(cfg, run_dir=run_dir, datasets=parts.datasets)
            if parts.collate_fn is not None:
                data.collate_fn = parts.collate_fn
            task = build_task(cfg, data.info, loss=parts.loss, metrics=parts.metrics, task=parts.task)
            if (
                parts.datasets is None and cfg.data.dataset in DATASETS and data.train_labels is not None
            ):  # a built-in's labels against the task (user data was checked as it was read)
                task.check_targets(torch.as_tensor(data.train_labels), f"data.dataset={cfg.data.dataset} with task={task.name}")
            data.info.num_outputs = task.num_outputs()  # the head the model must have
            model = parts.model if parts.model is not None else build_model(cfg.model, data.info)

            state = None
            if resume is not None:
                state = load_checkpoint(run_dir / "checkpoints" / "last.pt", weights=False)  # sharded: each rank reads its part later
            elif strategy.is_primary:
                run_dir = new_run_dir(cfg)
                created = True
                lock = lock_run_dir(run_dir)
                recording = True  # a new folder: its record says how this attempt ended
            run_dir = Path(strategy.broadcast_object(str(run_dir)))
            signals.run_dir = run_dir

            seed_everything(cfg.seed + 7919 * strategy.rank)  # per-rank randomness (dropout, augmentation)
            # The trackers come after the checkpoint's state is loaded: a resume that cannot continue writes nothing.
            trainer = Trainer(
                cfg,
                strategy,
                data,
                model,
                run_dir,
                None,
                task=task,
                callbacks=parts.callbacks,
                optimizer=parts.optimizer,
                scheduler=parts.scheduler,
                signals=signals,
            )
            if state is not None:
                try:
                    trainer.load_state(state)
                except (RuntimeError, KeyError, ValueError) as exc:  # load_state_dict: missing keys, size mismatch
                    first = str(exc).strip().splitlines()
                    detail = next(
                        (line.strip() for line in first if "size mismatch" in line or "Missing key" in line),
                        first[0] if first else type(exc).__name__,
                    )
                    raise CheckpointError(
                        f"checkpoint {run_dir / 'checkpoints' / 'last.pt'} does not fit this model ({detail[:200]}); "
                        "the run's record is unchanged"
                    ) from None
            if strategy.is_primary:
                recording = True
                if state is not None:
                    write_config(run_dir, cfg)
                    cut_torn_tail(run_dir / "metrics.jsonl")  # a killed run's half row: the resume's rows start clean
                    cut_rows_after(run_dir / "metrics.jsonl", state["step"])  # rows the resume will log again
                if data.save_artifacts is not None:
                    data.save_artifacts(run_dir)  # e.g. the trained tokenizer and label map, next to the checkpoints
                tracker = build_trackers(cfg, run_dir, resume_step=state["step"] if state else None)
                trainer.tracker = tracker
                write_status(
                    run_dir,
                    status="running",
                    reason=None,
                    started=started,
                    name=run_dir.name,
                    environment=environment(),
                    strategy=strategy.describe(),
                )
                print(
                    f"trainyard: {run_dir}  ({strategy.describe()}, {len(data.train)} training samples, {batch_text(cfg, strategy)}"
                    f"; {', '.join(trainer.speed_notes)})",
                    flush=True,
                )
        trained = True  # from here on a stop keeps what the loop saved
        final = trainer.fit()
        status = "finished"
        with signals.deferred("saving"):
            if strategy.is_primary:
                write_status(run_dir, final=final, best=trainer.best, monitor=trainer.monitor, monitor_mode=trainer.mode)
                shown = summary_text(final)  # e.g. accuracy 0.9972 (358/359, 95% CI 0.984-1.000)
                if shown:
                    print(f"test {shown} (best {trainer.monitor} checkpoint)")
                print(f"run folder: {run_dir}")
                if "tensorboard" in cfg.track.backends:
                    print(f"open TensorBoard: tensorboard --logdir {run_dir}", flush=True)
        return final
    except Interrupted as exc:
        status, reason = "interrupted", str(exc)
        raise
    except OSError as exc:
        status = "failed"
        if exc.errno not in CANNOT_WRITE:
            reason = f"{type(exc).__name__}: {exc}"
            raise
        error = write_error(exc, exc.filename or run_dir)  # a full disk or a read-only folder under a tracker or a data artifact: one line
        reason = str(error)
        raise error from None
    except Exception as exc:
        status = getattr(exc, "run_status", "failed")  # an error may say what the run became (e.g. diverged)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, TrainyardError):
            reason = f"{type(exc).__name__}: {reason}"
        raise
    finally:
        signals.deferred_mode = True  # the record is written whatever comes now
        try:
            if tracker is not None:
                with contextlib.suppress(OSError, TrainyardError):  # a full disk: the error already says so
                    tracker.close(status)
            stopped_in_setup = status == "interrupted" and not trained and created
            if strategy.is_primary and stopped_in_setup and run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)  # made by this command, holding nothing trained
            elif strategy.is_primary and recording and run_dir is not None and (run_dir / "config.yaml").exists():
                with contextlib.suppress(OSError, TrainyardError):  # no room even for the status: the error line says why
                    write_status(run_dir, status=status, reason=reason, ended=time.time(), duration_s=round(time.time() - started, 3))
        finally:
            if lock is not None:
                lock.release()
            if trainer is not None and trainer.compiled is not None:
                trainer.compiled.restore()  # the caller's model object gets its own forward back
            try:
                strategy.teardown()
            finally:
                signals.restore()
