"""CPU threads chosen with the loader workers, and the CUDA settings a run turns on (checked on CPU: the flags
are process-wide Python settings, set without a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainyard.devices import choose_threads, cuda_speedups, wants_channels_last

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def restore_settings():
    threads, precision, benchmark = torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    yield
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize(
    "cores, processes, workers, threads",
    [(2, 1, 0, 2), (2, 1, 1, 1), (8, 1, 3, 5), (8, 2, 1, 3), (2, 2, 4, 1), (1, 1, 0, 1)],
)
def test_auto_threads_share_the_cores_with_the_workers(monkeypatch, cores, processes, workers, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("trainyard.devices.TORCH_DEFAULT_THREADS", 64)  # a machine with more cores than these
    assert choose_threads("auto", cores=cores, processes=processes, workers=workers) == threads
    assert torch.get_num_threads() == threads


def test_auto_threads_stay_within_torchs_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("trainyard.devices.TORCH_DEFAULT_THREADS", 4)  # 4 physical cores, 8 logical
    assert choose_threads("auto", cores=8, processes=1, workers=0) == 4
    assert choose_threads("auto", cores=8, processes=1, workers=1) == 3


def test_an_explicit_setting_and_omp_num_threads_are_kept(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(3, cores=2, processes=1, workers=1) == 3  # the user's number, even above the cores
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads("auto", cores=8, processes=1, workers=0) == 1  # auto leaves OMP_NUM_THREADS's choice alone


def test_cuda_speedups_are_on_for_cuda_only_and_off_when_deterministic():
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = False
    assert cuda_speedups(torch.device("cpu"), enabled=True, deterministic=False) == []
    assert cuda_speedups(CUDA, enabled=True, deterministic=True) == []
    assert cuda_speedups(CUDA, enabled=False, deterministic=False) == []
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark  # nothing touched
    assert cuda_speedups(CUDA, enabled=True, deterministic=False) == ["tf32", "cudnn.benchmark"]
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark


def test_a_matmul_precision_the_user_chose_is_kept():
    torch.set_float32_matmul_precision("medium")
    assert "cudnn.benchmark" in cuda_speedups(CUDA, enabled=True, deterministic=False)
    assert torch.get_float32_matmul_precision() == "medium"


def test_channels_last_for_convolutional_models_on_cuda_and_cpu():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert wants_channels_last(conv, CUDA, enabled=True)
    assert wants_channels_last(conv, torch.device("cpu"), enabled=True)  # oneDNN's convolutions read NHWC too
    assert not wants_channels_last(conv, CUDA, enabled=False)
    assert not wants_channels_last(conv, torch.device("meta"), enabled=True)
    assert not wants_channels_last(mlp, CUDA, enabled=True)
