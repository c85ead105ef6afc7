"""``trainer.on_nonfinite``: a run whose loss (or weights) turn nan/inf stops at the next sync point it already has,
says so in one line, ends ``diverged`` and keeps its best.pt from before; ``skip_step`` trains through a poisoned
batch; ``ignore`` trains on as before; a sweep ranks a diverged trial last. Real runs on the bundled digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn
from torch.utils.data import TensorDataset

from trainyard.config import load_config
from trainyard.engine.checkpoint import load_checkpoint
from trainyard.engine.run import UserParts, train
from trainyard.errors import Diverged

BASE = [
    "trainer.epochs=2",
    "trainer.log_every=5",
    "model.width=8",
    "trainer.progress=false",
    "data.train_transforms=[]",
    "track.images=false",
    "track.graph=false",
    "trainer.histogram_every=0",
]
LOG_EVERY = 5


def config(tmp_path: Path, *overrides: str):
    return load_config(None, [f"track.root={tmp_path / 'runs'}", *BASE, *overrides])


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def assert_finite(path: Path) -> dict:
    state = load_checkpoint(path)
    for key, value in state["model"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{path.name}: {key} holds nan/inf"
    return state


class FirstNonFinite:
    """Records the first optimizer step whose loss is non-finite, and every step run (a callback may sync: a test)."""

    def __init__(self):
        self.first: int | None = None
        self.last = 0

    def on_step_end(self, trainer, step, loss):
        self.last = step
        if self.first is None and not math.isfinite(float(loss.detach())):
            self.first = step


class PoisonAt(FirstNonFinite):
    """Sets one weight to nan after optimizer step ``at``: the next step's loss is nan (a run that diverges at a known step)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_step_end(self, trainer, step, loss):
        super().on_step_end(trainer, step, loss)
        if step == self.at:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")


def test_high_lr_stops_within_log_every_with_one_line(tmp_path):
    """The issue's reproduction through the CLI: exit non-zero, one line, no traceback, status diverged, no bad best.pt."""
    run = tmp_path / "runs" / "lr"
    done = run_cli("train", f"track.root={tmp_path / 'runs'}", "name=lr", *BASE, "optim.name=sgd", "optim.lr=1e6", timeout=240)
    assert done.returncode == Diverged.exit_code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trainyard: error: diverged: the training loss is nan at step "), done.stderr
    assert "optim.lr=1e+06" in lines[0] and "test skipped" in lines[0]
    assert status(run)["status"] == "diverged"
    for name in ("best.pt", "last.pt"):
        if (run / "checkpoints" / name).exists():
            assert_finite(run / "checkpoints" / name)
    assert "diverged" in run_cli("runs", str(tmp_path / "runs")).stdout


def test_high_lr_stop_step_is_within_log_every_of_the_first_nan(tmp_path):
    seen = FirstNonFinite()
    with pytest.raises(Diverged) as caught:
        train(config(tmp_path, "name=lr", "optim.name=sgd", "optim.lr=1e6"), parts=UserParts(callbacks=[seen]))
    assert seen.first is not None
    assert seen.first <= seen.last < seen.first + LOG_EVERY  # stopped at the first read after it (a log step)
    assert seen.last % LOG_EVERY == 0
    assert f"at step {seen.last} (epoch 1" in str(caught.value)
    assert status(tmp_path / "runs" / "lr")["status"] == "diverged"


def test_divergence_in_second_epoch_keeps_epoch_one_best(tmp_path):
    poison = PoisonAt(at=27)  # 21 steps an epoch (1295 samples, batch 64): in epoch 2, between log steps 25 and 30
    run = tmp_path / "runs" / "second"
    with pytest.raises(Diverged) as caught:
        train(config(tmp_path, "name=second", "trainer.epochs=3"), parts=UserParts(callbacks=[poison]))
    assert poison.first == 28 and poison.last == 30  # stopped at the next log step, within log_every of the first nan
    message = str(caught.value)
    assert "at step 30 (epoch 2; first non-finite in steps 26-30" in message and "best.pt from epoch 1" in message, message
    assert status(run)["status"] == "diverged"
    best = assert_finite(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and best["step"] == 21
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # never overwritten with the nan weights
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("test/") for r in rows for k in r)  # the test phase is skipped


def test_weights_turned_nan_at_an_epoch_end_stop_before_the_save(tmp_path):
    """The last step of epoch 1 leaves nan weights (its own loss was finite): the epoch-end read catches them."""
    poison = PoisonAt(at=21)
    run = tmp_path / "runs" / "edge"
    with pytest.raises(Diverged, match=r"the weights hold nan/inf \(1 tensors\) at step 21 \(epoch 1"):
        train(config(tmp_path, "name=edge"), parts=UserParts(callbacks=[poison]))
    assert poison.first is None
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "checkpoints" / "best.pt").exists()
    assert status(run)["status"] == "diverged"


def digits_tensors():
    from sklearn.datasets import load_digits

    raw = load_digits()
    return torch.as_tensor(raw.data, dtype=torch.float32) / 16.0, torch.as_tensor(raw.target)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_nan_validation_loss_stops(tmp_path):
    import trainyard

    x, y = digits_tensors()
    val_x = x[1500:].clone()
    val_x[7, 3] = float("nan")  # one bad value in one sample: its batch's loss is nan, and so the validation loss
    with pytest.raises(Diverged, match=r"diverged: the validation loss is nan at step \d+ \(epoch 1\).*no checkpoint saved"):
        trainyard.fit(
            mlp(), TensorDataset(x[:1500], y[:1500]), TensorDataset(val_x, y[1500:]), config=[f"track.root={tmp_path}", *BASE], name="val"
        )
    assert status(tmp_path / "val")["status"] == "diverged"
    assert not (tmp_path / "val" / "checkpoints" / "best.pt").exists()


def test_skip_step_trains_through_a_poisoned_batch(tmp_path):
    import trainyard

    x, y = digits_tensors()
    x = x.clone()
    x[100] = float("nan")  # one bad sample: its batch's loss is nan, once an epoch
    seen = FirstNonFinite()
    result = trainyard.fit(
        mlp(),
        TensorDataset(x[:1500], y[:1500]),
        TensorDataset(x[1500:], y[1500:]),
        callbacks=[seen],
        config=[f"track.root={tmp_path}", *BASE, "trainer.on_nonfinite=skip_step"],
        name="skip",
    )
    run = tmp_path / "skip"
    assert seen.first is not None  # the poisoned batch was met
    assert status(run)["status"] == "finished"
    for name in ("last.pt", "best.pt"):
        assert_finite(run / "checkpoints" / name)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "train/skipped_steps" in r]
    assert [r["train/skipped_steps"] for r in epochs] == [1.0, 1.0]
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert result.metrics["val/accuracy"] > 0.15  # it learned (chance: 0.1)


def test_stop_on_the_same_poisoned_batch(tmp_path):
    """The default on the poisoned data: diverged, the hint names bad input values."""
    import trainyard

    x, y = digits_tensors()
    x = x.clone()
    x[100] = float("nan")
    with pytest.raises(Diverged, match="nan/inf input values"):
        trainyard.fit(
            mlp(),
            TensorDataset(x[:1500], y[:1500]),
            TensorDataset(x[1500:], y[1500:]),
            config=[f"track.root={tmp_path}", *BASE],
            name="stop",
        )


def test_ignore_trains_on_as_before(tmp_path):
    final = train(config(tmp_path, "name=ign", "optim.name=sgd", "optim.lr=1e6", "trainer.on_nonfinite=ignore"))
    assert math.isnan(final["train/loss"])
    assert status(tmp_path / "runs" / "ign")["status"] == "finished"


def test_sweep_ranks_a_diverged_trial_last(tmp_path):
    from trainyard.runs.sweep import Sweep

    items = [f"track.root={tmp_path / 'runs'}", *BASE, "trainer.epochs=1", "optim.name=sgd", "optim.lr=1e6,0.1"]
    sweep = Sweep.create(None, items, None, 0, "lr")
    assert sweep.run(log=lambda *_: None)
    assert [t["status"] for t in sweep.trials] == ["diverged", "finished"]
    assert "diverged" in sweep.trials[0]["error"]
    _, rows, monitor = sweep.summary()
    assert monitor == "val/accuracy"
    assert [r[0] for r in rows] == ["trial-001", "trial-000"] and rows[-1][1] == "diverged"
    # resumed, the sweep does not run its diverged trial again
    assert Sweep.load(sweep.folder).run(log=lambda *_: None)
    assert [t["status"] for t in Sweep.load(sweep.folder).trials] == ["diverged", "finished"]
    listing = run_cli("runs", str(sweep.folder))
    assert listing.returncode == 0 and "diverged" in listing.stdout, listing.stderr


def test_skip_step_also_undoes_the_batch_norm_statistics_of_the_skipped_step(tmp_path):
    """A skipped step's forward moved batch norm's running mean and variance with the bad sample's nan: they are
    put back with the step, so the run finishes with finite statistics instead of diverging at the epoch's end."""
    import trainyard

    x, y = digits_tensors()
    x = x.clone()
    x[100] = float("nan")
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    trainyard.fit(
        model,
        TensorDataset(x[:1500], y[:1500]),
        TensorDataset(x[1500:], y[1500:]),
        config=[f"track.root={tmp_path}", *BASE, "trainer.on_nonfinite=skip_step"],
        name="bn",
    )
    run = tmp_path / "bn"
    assert status(run)["status"] == "finished"
    for name in ("last.pt", "best.pt"):
        assert_finite(run / "checkpoints" / name)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.isfinite(state["1.running_mean"]).all() and torch.isfinite(state["1.running_var"]).all()
