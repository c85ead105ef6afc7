"""TensorBoard through ``SummaryWriter``, event files in the run folder itself."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from trainyard.config import RunConfig
from trainyard.track import Tracker


class TensorBoardTracker(Tracker):
    def __init__(self, cfg: RunConfig, run_dir: Path, *, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, drop events past the checkpoint so curves do not double back.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_groups(self, groups: Mapping[str, Mapping[str, float]], step: int) -> None:
        for main_tag, values in groups.items():
            self.writer.add_scalars(main_tag, dict(values), step)

    def log_histograms(self, model: nn.Module, step: int) -> None:
        for name, p in model.named_parameters():
            self._histogram(f"weights/{name}", p, step)
            if p.grad is not None:
                self._histogram(f"grads/{name}", p.grad, step)

    def _histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """30 equal buckets computed by torch (add_histogram's numpy path costs several times more per tensor)."""
        v = values.detach().float().flatten().cpu()
        v = v[torch.isfinite(v)]
        if v.numel() == 0:
            return
        lo, hi = v.min().item(), v.max().item()
        counts, edges = torch.histogram(v, bins=30, range=(lo, hi if hi > lo else lo + 1e-12))
        self.writer.add_histogram_raw(
            tag, min=lo, max=hi, num=v.numel(), sum=v.sum().item(), sum_squares=v.square().sum().item(),
            bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=step,
        )

    def log_graph(self, model: nn.Module, example: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example)
        except Exception as exc:  # tracing fails on data-dependent control flow: a warning, never a crash
            warnings.warn(f"model graph not logged: tracing failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", stacklevel=2)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self.writer.add_figure(tag, figure, step, close=False)  # Trackers closes it once every backend has it

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # SummaryWriter.add_hparams writes into a new timestamped sub-folder, which splits the run in two
        # in TensorBoard. Write the same three summaries into this run's own event file instead.
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        exp, ssi, sei = hparams_summary(dict(hparams), dict(metrics))
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        # The metric values themselves are the run's scalars of the same tags (logged by the trainer).
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.flush()
        self.writer.close()
