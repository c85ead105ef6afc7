"""Checks that need CUDA: skipped on CPU-only machines (CI), run by benchmarks/gpu_check.sh's machine."""

from __future__ import annotations

import pytest
import torch

from trainyard.config import load_config
from trainyard.engine.run import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
multi_gpu = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more CUDA devices")


def config(tmp_path, *overrides):
    return load_config(None, [f"track.root={tmp_path}", "trainer.epochs=2", "trainer.progress=false", "trainer.device=cuda", *overrides])


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_default_job_trains_on_cuda(tmp_path, precision):
    final = train(config(tmp_path, f"name={precision}", f"trainer.precision={precision}", "loader.pin_memory=auto"))
    assert final["test/accuracy"] > 0.8


@pytest.mark.cuda
@cuda
def test_checkpoint_from_cuda_resumes_on_cpu(tmp_path):
    from trainyard.cli import main

    train(config(tmp_path, "name=gpu", "trainer.epochs=1"))
    assert main(["train", "--resume", str(tmp_path / "gpu"), "trainer.device=cpu", "trainer.epochs=2"]) == 0


@pytest.mark.multi_gpu
@multi_gpu
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["ddp", "dp", "model"])
def test_multi_gpu_strategies(tmp_path, strategy):
    devices = "[cuda:0,cuda:1]" if strategy == "model" else "2"
    final = train(config(tmp_path, f"name={strategy}", f"parallel.strategy={strategy}", f"parallel.devices={devices}"))
    assert final["test/accuracy"] > 0.8
