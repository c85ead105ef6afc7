"""Choosing ``num_workers`` by measuring it (``trainyard tune-workers``).

``measure_workers(cfg)`` builds the run's real training data (its transforms included) and model,
then for ``num_workers`` = 0, 1, 2, 4, ... up to the CPU count it measures

- the loader alone, in batches/s, and
- training: the loader feeding the model's real step (forward, backward, optimizer step), in
  steps/s, with the share of time spent waiting for the next batch.

The recommendation is the value with the best training throughput (the fewest workers within 5%
of it: workers cost memory and start-up time). Training throughput, not the loader's alone, is what
counts: on a CPU run, workers compete with the model for the same cores, and a loader that is fast
on its own can make training slower.

``loader.num_workers: auto`` uses the last measurement for this data on this machine (stored by
every ``trainyard tune-workers`` run), else a heuristic, and says which.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trainyard.config import RunConfig
from trainyard.data.workers import DATA_BOUND, cpu_count, resolve_auto, store_num_workers  # noqa: F401 - the command's imports
from trainyard.errors import ConfigError

NEAR_BEST = 0.95  # values within 5% of the best count as the best (noise): pick the fewest workers among them


def candidates(cpus: int) -> list[int]:
    """0, 1, 2, 4, 8, ... up to the CPU count, and the CPU count itself."""
    values = [0, 1]
    while values[-1] * 2 <= cpus:
        values.append(values[-1] * 2)
    if values[-1] < cpus:
        values.append(cpus)
    return [v for v in values if v <= max(cpus, 1)]


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    num_workers: int
    batches_per_s: float  # the loader alone
    steps_per_s: float  # the loader feeding the model's training step
    data_wait: float  # share of training time spent waiting for the next batch
    startup_s: float  # until the first batch


@dataclass
class Tuning:
    measurements: list[Measurement]
    compute_s: float  # the model's training step alone, one batch, seconds
    device: torch.device
    cpus: int
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Measurement:
        top = max(m.steps_per_s for m in self.measurements)
        return min((m for m in self.measurements if m.steps_per_s >= NEAR_BEST * top), key=lambda m: m.num_workers)

    @property
    def data_bound(self) -> bool:
        return self.best.data_wait > DATA_BOUND


def train_step(
    cfg: RunConfig, model: torch.nn.Module, device: torch.device, criterion: Callable[[Any, torch.Tensor], torch.Tensor]
) -> Callable[[Any, Any], None]:
    """The model's real training step (forward under the run's autocast, the task's loss, backward, optimizer
    step), as tune-workers and the doctor's loader check time it."""
    from trainyard.engine.optim import build_optimizer

    optimizer = build_optimizer(model, cfg.optim)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision)
    if amp is torch.float16 and device.type != "cuda":
        amp = None

    def step(x: Any, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _train_step(cfg: RunConfig, model: torch.nn.Module, device: torch.device) -> Callable[[Any, Any], None]:
    """A classification step (cross-entropy): the name benchmarks/workers.py imports."""
    return train_step(cfg, model, device, torch.nn.CrossEntropyLoss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync point: only at the ends of a timed window


@dataclass
class Pass:
    """One timed pass over a loader (the first batch and its step are the warm-up, not counted)."""

    batches: int  # timed batches
    seconds: float  # after the warm-up
    wait_s: float  # of those, waiting for the next batch
    startup_s: float  # until the first batch

    @property
    def per_s(self) -> float:
        return self.batches / self.seconds if self.batches else 0.0

    @property
    def wait_share(self) -> float:
        return min(self.wait_s / self.seconds, 1.0) if self.batches else 0.0


def timed_pass(
    loader: Any, seconds: float, step: Callable | None, device: torch.device, *, min_batches: int = 2, max_batches: int | None = None
) -> Pass:
    """Iterate (restarting at each epoch's end, as training does) for about ``seconds`` after the first batch,
    at least ``min_batches`` and at most ``max_batches``, running ``step`` on each batch when given. A loader
    that gives no batch at all is a Pass of 0 batches."""
    from trainyard.devices import move

    start = time.perf_counter()
    it = iter(loader)
    try:
        x, y = next(it)
    except StopIteration:
        return Pass(0, 0.0, 0.0, time.perf_counter() - start)
    startup = time.perf_counter() - start
    if step is not None:
        step(move(x, device), move(y, device))
        _sync(device)
    count, wait = 0, 0.0
    begin = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        wait += time.perf_counter() - t0
        if step is not None:
            step(move(x, device), move(y, device))
        count += 1
        if (time.perf_counter() - begin >= seconds and count >= min_batches) or count == max_batches:
            break
    _sync(device)
    elapsed = max(time.perf_counter() - begin, 1e-9)
    del it  # shuts the workers down
    return Pass(count, elapsed, wait, startup)


def _timed_pass(loader: Any, seconds: float, step: Callable | None, device: torch.device) -> tuple[float, float, float]:
    """(batches per second, share of time waiting for batches, seconds until the first batch)."""
    p = timed_pass(loader, seconds, step, device)
    return p.per_s, p.wait_share, p.startup_s


def _compute_time(step: Callable, x: Any, y: torch.Tensor, device: torch.device, seconds: float) -> float:
    from trainyard.devices import move

    x, y = move(x, device), y.to(device)
    step(x, y)
    _sync(device)
    count, begin = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - begin < seconds:
        step(x, y)
        count += 1
        if count % 5 == 0:
            _sync(device)
    _sync(device)
    return (time.perf_counter() - begin) / count


def measure_workers(cfg: RunConfig, max_seconds: float = 60.0, report: Callable[[Measurement], None] | None = None) -> Tuning:
    """Measure ``num_workers`` = 0, 1, 2, 4, ... on the run's real data and model within about ``max_seconds``."""
    from trainyard.data import build_data
    from trainyard.data.loading import build_loader, check_loader_config, train_sampler
    from trainyard.devices import resolve_device, seed_everything
    from trainyard.models import build_model
    from trainyard.tasks import build_task

    check_loader_config(cfg.loader)
    device = resolve_device(cfg.trainer.device)
    # data, task, model in run_process's order: the task sets the head's width before the model is built
    seed_everything(cfg.seed)
    data = build_data(cfg)
    task = build_task(cfg, data.info)
    data.info.num_outputs = task.num_outputs()
    model = build_model(cfg.model, data.info).to(device).train()
    step = train_step(cfg, model, device, task.criterion)
    cpus = cpu_count()
    values = candidates(cpus)
    per_run = max(0.9 * max_seconds / (2 * len(values) + 1), 0.25)

    def loader_for(n: int):
        loader_cfg = dataclasses.replace(cfg.loader, num_workers=n, prefetch_factor=cfg.loader.prefetch_factor if n else None)
        sampler = train_sampler(data.train, shuffle=cfg.loader.shuffle, seed=cfg.seed)
        loader = build_loader(data.train, loader_cfg, device=device, sampler=sampler, train=True, collate_fn=data.collate_fn)
        loader.generator.manual_seed(cfg.seed)
        return loader

    started = time.perf_counter()  # the budget is for measuring, not for building the data and the model
    first = next(iter(loader_for(0)), None)
    if first is None:
        raise ConfigError(
            f"loader.batch_size={cfg.loader.batch_size}: the training loader gives no batch ({len(data.train)} samples, "
            f"loader.drop_last={str(cfg.loader.drop_last).lower()}); nothing to time"
        )
    x, y = first
    compute_s = _compute_time(step, x, y, device, per_run)
    tuning = Tuning([], compute_s, device, cpus)
    # Up the candidates, then back down (A B C C B A): a machine whose load drifts during the measurement
    # then biases no candidate. Training throughput is the mean of the two passes.
    upward: list[tuple[int, float, float, float, float]] = []
    for n in values:
        if len(upward) >= 2 and time.perf_counter() - started > max_seconds:
            tuning.notes.append(f"time budget spent: num_workers > {upward[-1][0]} not measured (raise --max-seconds)")
            break
        batches_per_s, _, startup = _timed_pass(loader_for(n), per_run, None, device)
        steps_per_s, data_wait, _ = _timed_pass(loader_for(n), per_run / 2, step, device)
        upward.append((n, batches_per_s, startup, steps_per_s, data_wait))
        best = max(u[3] for u in upward)
        # Past 2 workers, stop once training throughput falls below the best: more workers only add contention.
        if n >= 2 and steps_per_s < NEAR_BEST * best and n != values[-1]:
            tuning.stopped_early = True
            break
    for n, batches_per_s, startup, steps_up, wait_up in reversed(upward):
        steps_down, wait_down, _ = _timed_pass(loader_for(n), per_run / 2, step, device)
        tuning.measurements.insert(0, Measurement(n, batches_per_s, (steps_up + steps_down) / 2, (wait_up + wait_down) / 2, startup))
    if report is not None:
        for m in tuning.measurements:
            report(m)
    return tuning
