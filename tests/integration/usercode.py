"""A user's own code, as trainyard's config names it by import path (``usercode:Regressor``).

The integration tests run trainyard in subprocesses with this folder on PYTHONPATH (or as the working
directory), and in-process after pytest put this folder on sys.path. Everything here is module level, so
spawned ddp processes can import it. Nothing here draws from torch's global RNG except model
construction and dropout, so a plain loop seeded the way trainyard seeds replays a run exactly.
"""

import json
import os
import signal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainyard.tasks import Task

# --- datasets: real data from scikit-learn ------------------------------------------------------


def diabetes_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's diabetes set (442 x 10), the target standardised."""
    from sklearn.datasets import load_diabetes

    raw = load_diabetes()
    x = torch.as_tensor(raw.data, dtype=torch.float32)
    y = torch.as_tensor(raw.target, dtype=torch.float32)
    return x, (y - y.mean()) / y.std()


def diabetes() -> TensorDataset:
    """``data.dataset: usercode:diabetes``: one Dataset of (10 features, a real target)."""
    return TensorDataset(*diabetes_tensors())


def digit_attributes_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (1,797 8x8 images as 64 features in [0, 1]) with 4 attributes of the digit as
    0/1 labels: even, 5 or more, prime, has a closed loop (0, 6, 8, 9)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.as_tensor(raw.data, dtype=torch.float32) / 16.0
    d = torch.as_tensor(raw.target)
    labels = torch.stack([d % 2 == 0, d >= 5, (d == 2) | (d == 3) | (d == 5) | (d == 7), (d == 0) | (d == 6) | (d == 8) | (d == 9)], dim=1)
    return x, labels.float()


def digit_attributes(limit: int | None = None) -> TensorDataset:
    """``data.dataset: usercode:digit_attributes``: (64 features, a 0/1 vector of 4 attributes)."""
    x, y = digit_attributes_tensors()
    return TensorDataset(x[:limit], y[:limit]) if limit else TensorDataset(x, y)


def digit_classes() -> TensorDataset:
    """Digits with their class ids (0..9) as targets: what task=multilabel must refuse."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    return TensorDataset(torch.as_tensor(raw.data, dtype=torch.float32) / 16.0, torch.as_tensor(raw.target))


class Triples(Dataset):
    """Items of (input, target, weight): not an (input, target) pair."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(3), torch.tensor(0.0), 1.0


def triples() -> Triples:
    return Triples()


class DictInputs(Dataset):
    """Diabetes with the input as a dict holding the target too, as a Hugging Face model takes its labels."""

    def __init__(self):
        self.x, self.y = diabetes_tensors()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {"features": self.x[i], "target": self.y[i]}, self.y[i]


def dict_inputs() -> DictInputs:
    return DictInputs()


# --- models ---------------------------------------------------------------------------------------


class Regressor(nn.Module):
    """A small MLP with one output; trainyard gives ``in_features`` from the data."""

    def __init__(self, in_features: int, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Tagger(nn.Module):
    """Multi-label logits; trainyard gives ``in_features`` and ``num_labels`` from the data."""

    def __init__(self, in_features: int, num_labels: int, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DictRegressor(Regressor):
    """Reads its features from a dict input and returns predictions: the task's loss trains it."""

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["features"])


class OwnLossRegressor(Regressor):
    """Computes its own loss, as Hugging Face models do: ``{"loss": ..., "logits": ...}``."""

    def forward(self, batch: dict) -> dict:
        pred = self.net(batch["features"])
        return {"loss": F.mse_loss(pred.reshape(batch["target"].shape), batch["target"]), "logits": pred}


class ScalarLossRegressor(Regressor):
    """Returns nothing but its loss, a scalar."""

    def forward(self, batch: dict) -> torch.Tensor:
        pred = self.net(batch["features"])
        return F.mse_loss(pred.reshape(batch["target"].shape), batch["target"])


class NoLossTask(Task):
    """A task with no loss of its own (and no training statistic): the model must bring its loss."""

    name = "no_loss"


# --- callbacks --------------------------------------------------------------------------------------


class Recorder:
    """Appends every hook call as one JSON line to ``path``; stores a value in each checkpoint and records
    what comes back on resume. With ``sigterm_at``, sends this process SIGTERM after that optimizer step."""

    def __init__(self, path: str, sigterm_at: int | None = None):
        self.path = path
        self.sigterm_at = sigterm_at
        self.saves = 0

    def _write(self, hook: str, **fields) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"hook": hook, **fields}) + "\n")

    def on_run_start(self, trainer) -> None:
        self._write("run_start", step=trainer.step, epoch=trainer.epoch)

    def on_epoch_start(self, trainer, epoch) -> None:
        self._write("epoch_start", epoch=epoch)

    def on_first_batch(self, trainer, x, y) -> None:
        self._write("first_batch", batch=len(y))

    def on_step_end(self, trainer, step, loss) -> None:
        self._write("step_end", step=step, loss_is_tensor=isinstance(loss, torch.Tensor), loss_ndim=loss.ndim)
        if self.sigterm_at is not None and step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal: trainyard's handler stops after this step

    def on_validation_end(self, trainer, metrics) -> None:
        self._write("validation_end", keys=sorted(k for k in metrics if k.startswith("val/")))

    def on_epoch_end(self, trainer, metrics) -> None:
        self._write("epoch_end", epoch=trainer.epoch)

    def on_checkpoint_save(self, trainer, state) -> None:
        self.saves += 1
        state["recorder"] = {"saves": self.saves, "step": trainer.step, "token": f"saved-at-{trainer.step}"}
        self._write("checkpoint_save", step=trainer.step)

    def on_checkpoint_load(self, trainer, state) -> None:
        self._write("checkpoint_load", step=trainer.step, stored=state.get("recorder"))

    def on_run_end(self, trainer, final) -> None:
        self._write("run_end", step=trainer.step)


class BadSignature:
    """on_epoch_end without the metrics argument."""

    def on_epoch_end(self, trainer) -> None: ...


class TypoHook:
    """on_epoch_ends: a hook name with a typo, which would never be called."""

    def on_epoch_start(self, trainer, epoch) -> None: ...

    def on_epoch_ends(self, trainer, metrics) -> None: ...


class SignalInEval(nn.Module):
    """A digits classifier that sends this process ``signum`` (a real signal) in the middle of its ``eval_pass``-th
    pass in eval mode (1: the first validation; with one epoch and a validation split, 2 is the final test).
    SIGNAL_IN_EVAL=0 in the environment turns the signal off (a resume of the interrupted run)."""

    def __init__(self, in_channels: int, image_size: tuple, num_classes: int, eval_pass: int = 1, signum: int = signal.SIGTERM):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))
        self.eval_pass, self.signum = eval_pass, signum
        self.passes, self.batches = 0, 0

    def train(self, mode: bool = True):
        if not mode:  # model.eval(): a validation or test pass begins
            self.passes, self.batches = self.passes + 1, 0
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.batches += 1
            if self.passes == self.eval_pass and self.batches == 2 and os.environ.get("SIGNAL_IN_EVAL", "1") == "1":
                os.kill(os.getpid(), self.signum)
        return self.net(x)


class SignalOnBuild:
    """A callback that sends this process ``signum`` as the trainer builds it: in the run's set-up, after the run
    folder was made."""

    def __init__(self, signum: int = signal.SIGTERM):
        os.kill(os.getpid(), signum)

    def on_run_start(self, trainer) -> None: ...


class SignalOnSave:
    """Sends this process ``signum`` while the trainer assembles its ``at``-th checkpoint (inside the save)."""

    def __init__(self, at: int = 1, signum: int = signal.SIGTERM):
        self.at, self.signum, self.saves = at, signum, 0

    def on_checkpoint_save(self, trainer, state) -> None:
        self.saves += 1
        if self.saves == self.at:
            os.kill(os.getpid(), self.signum)
