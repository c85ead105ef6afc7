"""``train(cfg)``: build everything, run the loop, always clean up."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from trainyard.config import RunConfig, to_yaml


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: RunConfig, resume: str | Path | None = None) -> dict[str, float]:
    """Train one run (in every process the strategy launches); returns the primary's final metrics."""
    from trainyard.data.loading import check_loader_config
    from trainyard.parallel import build_strategy
    from trainyard.track import check_backends

    check_backends(cfg.track.backends)
    check_loader_config(cfg.loader)
    strategy = build_strategy(cfg)
    return strategy.launch(run_process, cfg, str(resume) if resume is not None else None)


def batch_text(cfg: RunConfig, strategy) -> str:
    """What loader.batch_size means here: per device; the global batch counts every process and accumulation step."""
    b, world, accumulate = cfg.loader.batch_size, strategy.world_size, cfg.trainer.accumulate
    parts = [str(b)] + ([f"{world} processes"] if world > 1 else []) + ([f"{accumulate} accumulation steps"] if accumulate > 1 else [])
    return f"loader.batch_size {b} per device, global batch {b * world * accumulate}" + (f" = {' x '.join(parts)}" if len(parts) > 1 else "")


def run_process(strategy, cfg: RunConfig, resume: str | None) -> dict[str, float]:
    """The body of one training process."""
    from trainyard.data import build_data
    from trainyard.engine.checkpoint import load_checkpoint
    from trainyard.engine.trainer import Interrupted, Trainer
    from trainyard.models import build_model
    from trainyard.track import build_trackers
    from trainyard.track.rundir import environment, new_run_dir, write_status

    strategy.setup()
    tracker = None
    run_dir: Path | None = None
    status = "failed"
    started = time.time()
    try:
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed)  # the same initial weights on every rank
        data = build_data(cfg, run_dir=Path(resume) if resume is not None else None)
        model = build_model(cfg.model, data.info)

        state = None
        if resume is None:
            resume = strategy.resume_dir()  # a job its launcher restarted continues its run folder
        if resume is not None:
            run_dir = Path(resume)
            state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
            if strategy.is_primary:
                (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        elif strategy.is_primary:
            run_dir = new_run_dir(cfg)
        run_dir = Path(strategy.broadcast_object(str(run_dir)))
        if strategy.is_primary and data.save_artifacts is not None:
            data.save_artifacts(run_dir)  # e.g. the trained tokenizer and label map, next to the checkpoints

        seed_everything(cfg.seed + 7919 * strategy.rank)  # per-rank randomness (dropout, augmentation)
        if strategy.is_primary:
            tracker = build_trackers(cfg, run_dir, resume_step=state["step"] if state else None)
            write_status(run_dir, status="running", started=started, name=run_dir.name, environment=environment(), strategy=strategy.describe())
        trainer = Trainer(cfg, strategy, data, model, run_dir, tracker)
        if state is not None:
            trainer.load_state(state)
        if strategy.is_primary:
            write_status(run_dir, strategy=strategy.describe())  # again: wrap() may have settled the layout (e.g. a model's split)
            print(f"trainyard: {run_dir}  ({strategy.describe()}, {len(data.train)} training samples, {batch_text(cfg, strategy)})", flush=True)
        final = trainer.fit()
        status = "finished"
        if strategy.is_primary:
            write_status(run_dir, final=final, best=trainer.best, monitor=trainer.monitor)
            if "test/accuracy" in final:
                print(f"test accuracy {final['test/accuracy']:.4f} (best {trainer.monitor} checkpoint)")
            print(f"run folder: {run_dir}")
            if "tensorboard" in cfg.track.backends:
                print(f"open TensorBoard: tensorboard --logdir {run_dir}", flush=True)
        return final
    except Interrupted:
        status = "interrupted"
        raise
    finally:
        if tracker is not None:
            tracker.close(status)
        if strategy.is_primary and run_dir is not None and (run_dir / "config.yaml").exists():
            write_status(run_dir, status=status, ended=time.time(), duration_s=round(time.time() - started, 3))
        strategy.teardown()

