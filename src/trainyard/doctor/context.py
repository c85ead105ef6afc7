"""What the checks look at, built once through the same code the run uses: the device, the data, the
task, the model, the training loader and a few real batches. A part that fails to build makes every check
that needs it report ``not run`` (a FAIL), except config mistakes, which stop the doctor with one line."""

from __future__ import annotations

import copy
import hashlib
import math
import random
from typing import Any, Callable

import torch
from torch import nn

from trainyard.config import RunConfig
from trainyard.data.splits import base_and_indices  # noqa: F401 - the checks read datasets below their views
from trainyard.errors import DataError, TrainyardError

SAMPLE_BATCHES = 8  # real batches loaded once and shared by the checks

# The layers whose behaviour depends on train/eval mode, by their public classes.
DROPOUT_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
BATCH_NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
)


class NotBuilt(Exception):
    """A part of the context could not be built; the check that needs it does not run."""

    def __init__(self, message: str, fix: str, error: BaseException | None = None):
        super().__init__(message)
        self.fix = fix
        self.error = error  # what building raised


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class Context:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._parts: dict[str, tuple[bool, Any]] = {}

    def _once(self, key: str, what: str, build: Callable[[], Any], fix: str) -> Any:
        if key not in self._parts:
            try:
                self._parts[key] = (True, build())
            except NotBuilt as exc:  # a part this one needs failed: the same reason
                self._parts[key] = (False, exc)
            except DataError as exc:  # data that cannot be used (targets that do not fit the task, ...): a finding
                self._parts[key] = (False, NotBuilt(f"{what} failed: {exc}", fix, exc))
            except TrainyardError as exc:
                self._parts[key] = (False, exc)  # a config mistake: the doctor stops (see is_setup_error)
            except Exception as exc:  # noqa: BLE001
                self._parts[key] = (False, NotBuilt(f"{what} failed: {first_line(exc)}", fix, exc))
        built, value = self._parts[key]
        if not built:
            raise value
        return value

    def is_setup_error(self, exc: BaseException) -> bool:
        """True for a config mistake met while building a part: no check can run, so the doctor stops with it."""
        return any(not built and value is exc for built, value in self._parts.values())

    def summary(self) -> str:
        c = self.cfg
        return (
            f"data.dataset={c.data.dataset} task.name={c.task.name} model.name={c.model.name} "
            f"parallel.strategy={c.parallel.strategy} trainer.device={c.trainer.device}"
        )

    def close(self) -> None:
        self._parts.clear()

    def seed(self, offset: int = 0) -> None:
        """Every check starts from the run's seed, so its numbers repeat."""
        random.seed(self.cfg.seed + offset)
        torch.manual_seed(self.cfg.seed + offset)

    # --- the parts -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        from trainyard.devices import resolve_device

        return self._once("device", "resolving trainer.device", lambda: resolve_device(self.cfg.trainer.device), "set trainer.device")

    @property
    def data(self):
        from trainyard.data import build_data

        return self._once("data", "building the data", lambda: build_data(self.cfg), "fix the dataset builder (data.dataset)")

    @property
    def task(self):
        """The run's task, built from the data's info as run_process builds it; it sets the head's width
        (``info.num_outputs``) before the model is built."""
        from trainyard.tasks import build_task

        def build():
            data = self.data
            task = build_task(self.cfg, data.info)
            data.info.num_outputs = task.num_outputs()
            return task

        return self._once("task", "building the task", build, "fix task.name")

    @property
    def model(self) -> nn.Module:
        """The model as the run builds it (same seed), on the CPU, never trained; checks train copies."""
        from trainyard.devices import seed_everything
        from trainyard.models import build_model

        def build():
            info = self.data.info
            _ = self.task  # the task sets info.num_outputs first, as in run_process
            seed_everything(self.cfg.seed)
            return build_model(self.cfg.model, info)

        return self._once("model", "building the model", build, "fix the model builder (model.name)")

    def fresh_model(self) -> nn.Module:
        """A copy of the initial model on the run's device, in training mode."""
        return copy.deepcopy(self.model).to(self.device).train()

    @property
    def strategy(self):
        """A one-process strategy on the run's device: what the engine's helpers (evaluate, Trainer) take."""
        from trainyard.parallel import Strategy

        def build():
            s = Strategy(self.cfg)
            s.device = self.device
            return s

        return self._once("strategy", "building a strategy", build, "")

    def train_loader(self):
        """A fresh training loader exactly as the trainer builds it (sampler from the strategy)."""
        import dataclasses

        from trainyard.data.loading import build_loader
        from trainyard.data.workers import resolve_auto

        data = self.data
        loader_cfg = dataclasses.replace(self.cfg.loader, num_workers=resolve_auto(self.cfg)[0])  # auto as the trainer resolves it
        sampler = self.strategy.train_sampler(data.train, shuffle=self.cfg.loader.shuffle, seed=self.cfg.seed)
        return build_loader(data.train, loader_cfg, device=self.device, sampler=sampler, train=True, collate_fn=data.collate_fn)

    @property
    def batches(self) -> list[tuple[Any, torch.Tensor]]:
        """The first few training batches, on the device."""
        from trainyard.devices import move

        def build():
            self.seed()
            out = []
            for x, y in self.train_loader():
                out.append((move(x, self.device), torch.as_tensor(y).to(self.device)))
                if len(out) == SAMPLE_BATCHES:
                    break
            if not out:
                raise RuntimeError("the training loader gave no batch")
            return out

        return self._once("batches", "loading training batches", build, "fix the dataset's __getitem__ or the transforms")

    @property
    def batch(self) -> tuple[Any, torch.Tensor]:
        return self.batches[0]

    @property
    def loss_fn(self) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """The task's criterion, the run's loss: it reads a model's own loss or logits from a dict or object output."""
        return self.task.criterion

    def loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        """The run's loss of one model output; a plain tensor in float32, as evaluation computes it."""
        if isinstance(out, torch.Tensor) and out.ndim:
            out = out.float()
        return self.task.criterion(out, y)

    @property
    def train_labels(self) -> tuple[torch.Tensor, bool]:
        """All training targets (or a sample of them, flagged True), without loading the inputs when the dataset allows."""

        def read():
            from trainyard.data.user import targets_of

            data = self.data
            if data.train_labels is not None:
                return torch.as_tensor(data.train_labels), False
            targets = targets_of(data.train, "train split")  # stacks vector targets; samples large datasets read item by item
            return targets, len(targets) < len(data.train)

        return self._once("labels", "reading the training targets", read, "fix the dataset's targets")

    # --- planned run shape -------------------------------------------------------------
    def world_size(self) -> int | None:
        """Processes that each take their own share of the data: 1 unless ddp; None when decided at launch."""
        p = self.cfg.parallel
        if p.strategy != "ddp":
            return 1
        if isinstance(p.devices, int):
            return p.devices
        if isinstance(p.devices, list):
            return len(p.devices)
        return torch.cuda.device_count() if torch.cuda.is_available() else None


def strategy_class(name: str) -> type | None:
    from trainyard.parallel import STRATEGIES
    from trainyard.parallel import strategy_class as resolve

    return resolve(name) if name in STRATEGIES else None


def content_key(base: Any, j: int) -> bytes:
    """A hash of the raw input of ``base[j]`` (below the transforms), or of its file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    samples = getattr(base, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[j], tuple) and isinstance(samples[j][0], str):
        with open(samples[j][0], "rb") as f:
            h.update(f.read())
        return h.digest()
    inputs = getattr(base, "inputs", None)
    x = inputs[j] if isinstance(inputs, torch.Tensor) else base[j][0]
    _feed(h, x)
    return h.digest()


def _feed(h: Any, x: Any) -> None:
    if isinstance(x, torch.Tensor):
        h.update(f"{x.dtype}{tuple(x.shape)}".encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes() if x.dtype != torch.bfloat16 else x.float().numpy().tobytes())
    elif isinstance(x, str):
        h.update(x.encode("utf-8"))
    elif isinstance(x, (bytes, bytearray)):
        h.update(x)
    elif hasattr(x, "tobytes"):  # numpy arrays, PIL images
        h.update(f"{getattr(x, 'shape', getattr(x, 'size', ''))}".encode())
        h.update(x.tobytes())
    elif isinstance(x, dict):
        for k in sorted(x):
            h.update(str(k).encode())
            _feed(h, x[k])
    elif isinstance(x, (list, tuple)):
        for v in x:
            _feed(h, v)
    else:
        h.update(repr(x).encode())


def take(x: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (tensor, or dict/list of tensors)."""
    if isinstance(x, torch.Tensor):
        return x[:n]
    if isinstance(x, dict):
        return {k: take(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(take(v, n) for v in x)
    return x


def describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def float_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.is_floating_point() else []
    if isinstance(x, dict):
        return [t for v in x.values() for t in float_tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in float_tensors(v)]
    return []


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt(x: float) -> str:
    """A short number, two significant digits: 0.003, 0.0059, 1000, 1.0e-07."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    return f"{float(f'{x:.2g}'):g}" if 1e-4 <= abs(x) < 1e5 else f"{x:.1e}"
