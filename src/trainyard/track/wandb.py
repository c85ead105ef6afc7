"""Weights & Biases: the config, the same scalars as TensorBoard, image grids, figures, gradients and a summary.

An optional extra (``pip install 'trainyard[wandb]'``). The run's W&B files live in ``<run>/wandb/``.
When the W&B server cannot be reached the run goes on offline, with a warning; ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from trainyard.config import RunConfig, to_dict
from trainyard.errors import TrainyardError
from trainyard.track import Tracker
from trainyard.track.rundir import read_status, write_status

INSTALL_HINT = "track.backends: wandb needs the wandb package; install it with: pip install 'trainyard[wandb]'"


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise TrainyardError(INSTALL_HINT) from None
    return wandb


def server_reachable(base_url: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the W&B server opens, else why not (one short phrase)."""
    url = urlparse(base_url)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return f"bad server address {base_url!r}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


class WandbTracker(Tracker):
    def __init__(self, cfg: RunConfig, run_dir: Path, *, resume_step: int | None = None):
        wandb = import_wandb()
        self.wandb = wandb
        w = cfg.track.wandb
        mode = os.environ.get("WANDB_MODE") or w.mode  # the environment wins, as everywhere in W&B
        if mode == "dryrun":
            mode = "offline"
        if mode == "online":
            base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            why = server_reachable(base_url)
            if why is not None:
                warnings.warn(
                    f"W&B: cannot reach {base_url} ({why}); logging offline to {run_dir / 'wandb'}; upload later with: wandb sync "
                    f"{run_dir / 'wandb'}",
                    stacklevel=2,
                )
                mode = "offline"
        run_id = read_status(run_dir).get("wandb", {}).get("id") if resume_step is not None else None
        kwargs = dict(
            project=w.project,
            entity=w.entity,
            tags=list(w.tags) or None,
            name=run_dir.name,
            dir=str(run_dir),
            config=to_dict(cfg),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", silent=True, init_timeout=30),
        )
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as exc:  # no API key, server error, timeout: W&B must never stop training
            if mode != "online":
                raise
            warnings.warn(
                f"W&B: online run failed to start ({type(exc).__name__}: {exc}); logging offline to {run_dir / 'wandb'}", stacklevel=2
            )
            self.run = wandb.init(mode="offline", **kwargs)
        # The trainer's optimizer step is the x-axis of every metric; W&B's own step just counts log calls,
        # so a resumed run (whose steps restart from the checkpoint) never logs "backwards".
        self.run.define_metric("trainer/step")
        self.run.define_metric("*", step_metric="trainer/step")
        self.watch_every = w.watch
        if mode != "disabled":
            write_status(run_dir, wandb={"id": self.run.id, "mode": mode, "dir": str(Path(self.run.dir).parent), "url": self.run.url})

    def _log(self, data: dict[str, Any], step: int) -> None:
        data["trainer/step"] = step
        self.run.log(data)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        self._log({**metrics, "epoch": epoch}, step)

    # log_groups: the grouped curves are the same scalars as log_metrics; W&B overlays charts itself.

    def watch(self, model: nn.Module) -> None:
        if self.watch_every:
            # Hooks every parameter's gradient; histograms are computed only every ``watch`` backward passes.
            self.run.watch(model, log="gradients", log_freq=self.watch_every)

    def log_histograms(self, model: nn.Module, step: int) -> None:
        data: dict[str, Any] = {}
        for name, p in model.named_parameters():
            data[f"weights/{name}"] = self.wandb.Histogram(p.detach().float().cpu().numpy())
        self._log(data, step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        hwc = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
        if hwc.shape[2] == 1:
            hwc = hwc[:, :, 0]
        self._log({tag: self.wandb.Image(hwc.numpy())}, step)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self._log({tag: self.wandb.Image(figure)}, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # The config went in at init; the summary holds the final and best metrics (not just the last logged value).
        self.run.summary.update(dict(metrics))

    def close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "finished" else 1)
