"""Every loader knob has its effect; worker seeding; bad loader input through the CLI."""

from __future__ import annotations

import dataclasses
import random
import textwrap

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch.utils.data import Dataset

from trainyard.config import LoaderConfig, load_config
from trainyard.data import build_data
from trainyard.data.collate import pad_collate
from trainyard.data.loading import build_loader, train_sampler
from trainyard.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return build_data(load_config(None, []))


def loader_cfg(**kw) -> LoaderConfig:
    return dataclasses.replace(LoaderConfig(), **kw)


def test_drop_last_changes_the_batch_count(digits):
    n = len(digits.train)
    assert n % 64, "the digits training split must not divide evenly for this test"
    keep = build_loader(digits.train, loader_cfg(drop_last=False), device=CPU, train=True)
    drop = build_loader(digits.train, loader_cfg(drop_last=True), device=CPU, train=True)
    assert sum(1 for _ in keep) == n // 64 + 1
    assert sum(1 for _ in drop) == n // 64
    assert sum(len(y) for _, y in drop) == (n // 64) * 64
    # evaluation never drops samples
    evaluation = build_loader(digits.train, loader_cfg(drop_last=True, eval_batch_size=64), device=CPU, train=False)
    assert sum(len(y) for _, y in evaluation) == n


def test_pin_memory_auto_is_on_only_for_cuda(digits):
    assert build_loader(digits.train, loader_cfg(pin_memory="auto"), device=CPU, train=True).pin_memory is False
    assert build_loader(digits.train, loader_cfg(pin_memory="auto"), device=torch.device("cuda"), train=True).pin_memory is True
    assert build_loader(digits.train, loader_cfg(pin_memory=True), device=CPU, train=True).pin_memory is True
    assert build_loader(digits.train, loader_cfg(pin_memory=False), device=torch.device("cuda"), train=True).pin_memory is False


def test_shuffle_persistent_workers_and_prefetch_reach_the_loader(digits):
    order = lambda shuffle: list(train_sampler(digits.train, shuffle=shuffle, seed=0))  # noqa: E731
    assert order(False) == list(range(len(digits.train)))
    assert order(True) != order(False) and sorted(order(True)) == order(False)
    loader = build_loader(digits.train, loader_cfg(num_workers=2, persistent_workers=True, prefetch_factor=3), device=CPU, train=True)
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 3)
    # persistent_workers means nothing without workers, and is dropped there
    assert build_loader(digits.train, loader_cfg(persistent_workers=True), device=CPU, train=True).persistent_workers is False


class RandomProbe(Dataset):
    """Each sample draws from python's, numpy's and torch's RNG: what augmentations use."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return torch.tensor([random.random(), float(np.random.rand()), torch.rand(()).item()]), i


def _batches(dataset, seed: int, workers: int = 2, n: int = 2) -> list[torch.Tensor]:
    loader = build_loader(dataset, loader_cfg(num_workers=workers, batch_size=4, shuffle=False), device=CPU, train=True)
    loader.generator.manual_seed(seed)  # what the trainer does each epoch, from (seed, rank, epoch)
    out = []
    for x, _ in loader:
        out.append(x)
        if len(out) == n:
            break
    return out


@pytest.mark.timeout(120)
def test_workers_are_seeded_from_the_run_seed():
    first, second = _batches(RandomProbe(), seed=1)  # batch 0 from worker 0, batch 1 from worker 1
    again = _batches(RandomProbe(), seed=1)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1]), "the same seed must repeat the same draws"
    for column, rng in enumerate(["python", "numpy", "torch"]):
        assert not torch.equal(first[:, column], second[:, column]), f"two workers drew the same {rng} random numbers"
    other = _batches(RandomProbe(), seed=2)
    assert not torch.equal(first, other[0]), "a different seed must give different draws"


@pytest.mark.timeout(120)
def test_same_seed_repeats_the_augmented_batches_and_workers_differ(digits):
    from trainyard.data.splits import TransformedSubset

    a = _batches(digits.train, seed=5)
    b = _batches(digits.train, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # one image, repeated: every difference between samples is augmentation
    same_image = TransformedSubset(digits.train.base, [digits.train.indices[0]] * 16, digits.train.transform)
    w0, w1 = _batches(same_image, seed=5)
    assert not torch.equal(w0, w1), "worker 0 and worker 1 produced the same augmentations"
    assert not torch.equal(w0[0], w0[1]), "samples in one batch got the same augmentation"


@pytest.mark.timeout(180)
def test_pad_collate_with_workers_under_spawn():
    samples = [(torch.arange(1, length + 1), length % 2) for length in (3, 1, 4, 1, 5, 9, 2, 6)]
    loader = build_loader(samples, loader_cfg(num_workers=2, batch_size=4, shuffle=False, collate="pad"), device=CPU, train=True)
    loader.multiprocessing_context = "spawn"  # what macOS and Windows use: everything must pickle
    batches = list(loader)
    assert [b[0]["ids"].shape for b in batches] == [(4, 4), (4, 9)]
    assert torch.equal(batches[0][0]["ids"], pad_collate(samples[:4])[0]["ids"])
    assert batches[1][0]["lengths"].tolist() == [5, 9, 2, 6]
    assert batches[1][0]["mask"].sum().item() == 22


COLLATE_MODULE = """
import time
from pathlib import Path
from torch.utils.data import default_collate

MARKER = Path(__file__).with_name("collate_was_used")
NOT_CALLABLE = 3

def stamped(samples):
    MARKER.write_text("yes")
    return default_collate(samples)

def slow(samples):
    time.sleep(0.05)
    return default_collate(samples)
"""


@pytest.fixture
def collate_module(tmp_path, monkeypatch):
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "my_collate.py").write_text(textwrap.dedent(COLLATE_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{__import__('os').environ['PYTHONPATH']}")
    return folder


def test_custom_collate_from_an_import_path(digits, collate_module):
    loader = build_loader(digits.train, loader_cfg(collate="my_collate:stamped"), device=CPU, train=True)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and (collate_module / "collate_was_used").read_text() == "yes"


@pytest.mark.timeout(240)
def test_training_with_a_custom_collate_warns_once_when_data_bound(collate_module, tiny):
    proc = run_cli("train", *tiny, "loader.collate=my_collate:slow", "trainer.epochs=2", "loader.batch_size=256", "track.backends=[]")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning: data-bound") == 1, proc.stderr
    assert "trainyard tune-workers" in proc.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["loader.num_workers=-1"], "loader.num_workers=-1: must be >= 0"),
        (["loader.prefetch_factor=2"], "loader.prefetch_factor=2: needs loader.num_workers > 0"),
        (["loader.collate=no_such_module:collate"], "loader.collate=no_such_module:collate: cannot import no_such_module"),
        (["loader.collate=my_collate:missing"], "has no attribute 'missing'"),
        (["loader.collate=my_collate:NOT_CALLABLE"], "my_collate.NOT_CALLABLE is not callable"),
        (["loader.collate=stack"], "allowed values are default, pad, or package.module:function"),
        (["loader.batch_size=5000", "loader.drop_last=true"], "loader.batch_size=5000: larger than the 1295 training samples"),
    ],
)
def test_bad_loader_input_is_one_line_and_exit_2(overrides, expected, collate_module, tiny):
    proc = run_cli("train", *tiny, *overrides)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainyard: error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_input_raises_before_a_loader_exists(digits):
    with pytest.raises(ConfigError, match="prefetch_factor"):
        build_loader(digits.train, loader_cfg(prefetch_factor=2), device=CPU, train=True)
