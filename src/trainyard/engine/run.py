"""``train(cfg)``: build everything, run the loop, always clean up."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainyard.config import RunConfig, to_yaml
from trainyard.devices import seed_everything  # noqa: F401 - re-exported: the doctor and benchmarks seed like a run


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


def train(cfg: RunConfig, resume: str | Path | None = None, parts: UserParts | None = None) -> dict[str, float]:
    """Train one run (in every process the strategy launches); returns the primary's final metrics."""
    from trainyard.data.loading import check_loader_config
    from trainyard.parallel import build_strategy
    from trainyard.track import check_backends

    check_backends(cfg.track.backends)
    check_loader_config(cfg.loader)
    check_names(cfg, parts)
    strategy = build_strategy(cfg)
    return strategy.launch(run_process, cfg, str(resume) if resume is not None else None, parts)


def batch_text(cfg: RunConfig, strategy) -> str:
    """What loader.batch_size means here: per device; the global batch counts every process and accumulation step."""
    b, world, accumulate = cfg.loader.batch_size, strategy.world_size, cfg.trainer.accumulate
    parts = [str(b)] + ([f"{world} processes"] if world > 1 else []) + ([f"{accumulate} accumulation steps"] if accumulate > 1 else [])
    return f"loader.batch_size {b} per device, global batch {b * world * accumulate}" + (f" = {' x '.join(parts)}" if len(parts) > 1 else "")


def run_process(strategy, cfg: RunConfig, resume: str | None, parts: UserParts | None = None) -> dict[str, float]:
    """The body of one training process."""
    from trainyard.data import DATASETS, build_data
    from trainyard.engine.checkpoint import load_checkpoint
    from trainyard.engine.trainer import Trainer
    from trainyard.errors import Interrupted
    from trainyard.models import build_model
    from trainyard.tasks import build_task
    from trainyard.track import build_trackers
    from trainyard.track.rundir import environment, lock_run_dir, new_run_dir, write_status

    strategy.setup()
    tracker = None
    run_dir: Path | None = None
    lock = None
    recording = False  # whether this process has written into the run folder: until then a failure leaves it as it was
    status = "failed"
    started = time.time()
    try:
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed)  # the same initial weights on every rank
        if resume is None:
            resume = strategy.resume_dir()  # a job its launcher restarted continues its run folder
        if resume is not None and strategy.is_primary:
            lock = lock_run_dir(resume)  # one writer per run folder: refused, with nothing changed, while another trains in it
        parts = parts or UserParts()
        if parts.model is not None and strategy.processes > 1:
            # A spawned process's model arrived through torch.multiprocessing, whose pickling puts CPU tensors in
            # shared memory: every rank (and the caller) would hold the same parameters, each step applied N times.
            parts = dataclasses.replace(parts, model=copy.deepcopy(parts.model))
        data = build_data(cfg, run_dir=Path(resume) if resume is not None else None, datasets=parts.datasets)
        if parts.collate_fn is not None:
            data.collate_fn = parts.collate_fn
        task = build_task(cfg, data.info, loss=parts.loss, metrics=parts.metrics, task=parts.task)
        if parts.datasets is None and cfg.data.dataset in DATASETS and data.train_labels is not None:  # a built-in's labels against the task (user data was checked as it was read)
            task.check_targets(torch.as_tensor(data.train_labels), f"data.dataset={cfg.data.dataset} with task={task.name}")
        data.info.num_outputs = task.num_outputs()  # the head the model must have
        model = parts.model if parts.model is not None else build_model(cfg.model, data.info)

        state = None
        if resume is not None:
            run_dir = Path(resume)
            state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        elif strategy.is_primary:
            run_dir = new_run_dir(cfg)
            lock = lock_run_dir(run_dir)
            recording = True  # a new folder: its record says how this attempt ended
        run_dir = Path(strategy.broadcast_object(str(run_dir)))

        seed_everything(cfg.seed + 7919 * strategy.rank)  # per-rank randomness (dropout, augmentation)
        # The trackers come after the checkpoint's state is loaded: a resume that cannot continue writes nothing.
        trainer = Trainer(cfg, strategy, data, model, run_dir, None, task=task, callbacks=parts.callbacks, optimizer=parts.optimizer, scheduler=parts.scheduler)
        if state is not None:
            trainer.load_state(state)
        if strategy.is_primary:
            recording = True
            if state is not None:
                (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
            if data.save_artifacts is not None:
                data.save_artifacts(run_dir)  # e.g. the trained tokenizer and label map, next to the checkpoints
            tracker = build_trackers(cfg, run_dir, resume_step=state["step"] if state else None)
            trainer.tracker = tracker
            write_status(run_dir, status="running", started=started, name=run_dir.name, environment=environment(), strategy=strategy.describe())
            print(f"trainyard: {run_dir}  ({strategy.describe()}, {len(data.train)} training samples, {batch_text(cfg, strategy)})", flush=True)
        final = trainer.fit()
        status = "finished"
        if strategy.is_primary:
            write_status(run_dir, final=final, best=trainer.best, monitor=trainer.monitor, monitor_mode=trainer.mode)
            tested = {k.removeprefix("test/"): v for k, v in final.items() if k.startswith("test/") and k.count("/") == 1}
            if tested:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in tested.items() if k != "loss") or f"loss {tested['loss']:.4f}"
                print(f"test {shown} (best {trainer.monitor} checkpoint)")
            print(f"run folder: {run_dir}")
            if "tensorboard" in cfg.track.backends:
                print(f"open TensorBoard: tensorboard --logdir {run_dir}", flush=True)
        return final
    except Interrupted:
        status = "interrupted"
        raise
    except Exception as exc:
        status = getattr(exc, "run_status", "failed")  # an error may say what the run became (e.g. diverged)
        raise
    finally:
        if tracker is not None:
            tracker.close(status)
        try:
            if strategy.is_primary and recording and run_dir is not None and (run_dir / "config.yaml").exists():
                write_status(run_dir, status=status, ended=time.time(), duration_s=round(time.time() - started, 3))
        finally:
            if lock is not None:
                lock.release()
            strategy.teardown()

