"""The ground floor beside errors: devices, seeds, and moving batches onto a device."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from trainyard.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto``: cuda, then mps, then cpu. Otherwise the named device, checked to exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"trainer.device={spec}: not a device; allowed: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={spec}: CUDA is not available on this machine; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"trainer.device={spec}: MPS is not available on this machine; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move(batch, device: torch.device):
    """A batch (a tensor, or dicts, lists and tuples of them) on ``device``, copied without a host sync."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device) for v in batch)
    return batch


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# torch's own choice at start-up (the physical cores): hyperthreads counted as cores would slow the kernels down
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def choose_threads(setting: int | str, *, cores: int, processes: int, workers: int) -> int:
    """``torch.set_num_threads`` for this process: a number as given; ``auto`` leaves OMP_NUM_THREADS (the user's
    choice) alone, else takes this process's share of the cores (at most torch's default) less one per loader
    worker, so that the model's threads and the workers do not fight over the same cores. Returns the threads now in use."""
    if setting != "auto":
        torch.set_num_threads(int(setting))
    elif "OMP_NUM_THREADS" not in os.environ:
        share = min(TORCH_DEFAULT_THREADS, cores // max(1, processes))
        torch.set_num_threads(max(1, share - workers))
    return torch.get_num_threads()


def cuda_speedups(device: torch.device, *, enabled: bool, deterministic: bool) -> list[str]:
    """Process-wide CUDA settings PyTorch leaves off for exactness: TF32 float32 matmuls (convolutions already use
    it) and cudnn.benchmark (picks the fastest convolution algorithm per shape). Neither under trainer.deterministic;
    a matmul precision set before (by the user) is kept. Returns the names of what is on, for the start line."""
    if device.type != "cuda" or not enabled or deterministic:
        return []
    on = []
    if torch.get_float32_matmul_precision() == "highest":  # PyTorch's default: nobody chose otherwise
        torch.set_float32_matmul_precision("high")
    if torch.get_float32_matmul_precision() != "highest":
        on.append("tf32")
    torch.backends.cudnn.benchmark = True
    on.append("cudnn.benchmark")
    return on


def wants_channels_last(model: torch.nn.Module, device: torch.device, *, enabled: bool) -> bool:
    """Whether to train in channels_last: on CUDA and CPU, for a model with 2-d convolutions (tensor cores and
    oneDNN's convolutions read NHWC; other layouts are converted on every call)."""
    return enabled and device.type in ("cuda", "cpu") and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
