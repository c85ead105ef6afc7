"""Hyperparameter sweeps: a grid or N random trials, each its own run under ``<track.root>/<sweep>/``.

``sweep.json`` in the sweep folder holds the spec and every trial's state, written after each change,
so an interrupted sweep (Ctrl-C, a killed process, a reboot) continues where it stopped: finished and
failed trials are kept, an interrupted trial resumes from its last.pt, pending trials start.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from trainyard.config import load_config
from trainyard.errors import ConfigError, TrainyardError

STATE_FILE = "sweep.json"
RANGE = re.compile(r"^(uniform|loguniform|randint)\((.*)\)$")


def split_values(text: str) -> list[str]:
    """``0.1,0.01`` -> [``0.1``, ``0.01``]; commas inside [], {}, () or quotes do not split (``[a,b],[c]``)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_sweep_args(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Fixed overrides (one value) and sweep axes (``key=v1,v2,...`` or ``key=loguniform(a,b)``)."""
    fixed: list[str] = []
    axes: dict[str, list[str]] = {}
    for item in items:
        key, _, text = item.partition("=")
        key = key.strip()
        if key in ("name",):
            raise ConfigError(f"{item}: the sweep names each trial's run itself (trial-000, ...); name the sweep with --name")
        if RANGE.match(text.strip()):
            axes[key] = [text.strip()]
            continue
        values = split_values(text)
        if len(values) > 1:
            if key in axes:
                raise ConfigError(f"{key}: given twice")
            if any(v == "" for v in values):
                raise ConfigError(f"{item}: empty value in the list")
            axes[key] = values
        else:
            fixed.append(item)
    return fixed, axes


def _range(key: str, spec: str) -> tuple[str, float, float]:
    kind, args = RANGE.match(spec).groups()  # type: ignore[union-attr]
    try:
        low, high = (float(a) for a in args.split(","))
    except ValueError:
        raise ConfigError(f"{key}={spec}: expected {kind}(LOW,HIGH) with two numbers") from None
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"{key}={spec}: need LOW < HIGH{' and LOW > 0' if kind == 'loguniform' else ''}")
    return kind, low, high


def plan_trials(axes: dict[str, list[str]], random_trials: int | None, seed: int) -> list[list[str]]:
    """Each trial's overrides: the full grid, or ``random_trials`` samples (choices from lists, draws from ranges)."""
    ranges = {k: _range(k, v[0]) for k, v in axes.items() if len(v) == 1 and RANGE.match(v[0])}
    if random_trials is None:
        if ranges:
            raise ConfigError(f"{next(iter(ranges))}: a range needs random search (--random N)")
        return [[f"{k}={v}" for k, v in zip(axes, combo)] for combo in itertools.product(*axes.values())]
    rng = random.Random(seed)
    lists = {k: v for k, v in axes.items() if k not in ranges}
    grid = list(itertools.product(*lists.values()))
    if not ranges:  # distinct samples of the grid
        picks = rng.sample(grid, min(random_trials, len(grid)))
        return [[f"{k}={v}" for k, v in zip(lists, combo)] for combo in picks]
    trials = []
    for _ in range(random_trials):
        trial = []
        for key in axes:
            if key in ranges:
                kind, low, high = ranges[key]
                if kind == "uniform":
                    value = f"{rng.uniform(low, high):.6g}"
                elif kind == "loguniform":
                    value = f"{math.exp(rng.uniform(math.log(low), math.log(high))):.6g}"
                else:
                    value = str(rng.randint(int(low), int(high)))
            else:
                value = rng.choice(lists[key])
            trial.append(f"{key}={value}")
        trials.append(trial)
    return trials


class Sweep:
    def __init__(self, folder: Path, state: dict[str, Any]):
        self.folder = folder
        self.state = state

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.state["trials"]

    def save(self) -> None:
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2), encoding="utf-8")
        os.replace(tmp, self.folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> "Sweep":
        path = Path(folder) / STATE_FILE
        try:
            return cls(Path(folder), json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise TrainyardError(f"--resume {folder}: not a sweep folder (no {STATE_FILE})") from None
        except ValueError as exc:
            raise TrainyardError(f"{path}: unreadable ({exc})") from None

    @classmethod
    def create(cls, config: str | None, items: list[str], random_trials: int | None, seed: int, name: str | None) -> "Sweep":
        """A new sweep, or the existing one of the same name and spec (which then resumes)."""
        if random_trials is not None and random_trials < 1:
            raise ConfigError(f"--random {random_trials}: must be >= 1")
        fixed, axes = parse_sweep_args(items)
        if not axes:
            raise ConfigError("nothing to sweep: give at least one key with several values, e.g. optim.lr=0.1,0.01")
        base = load_config(config, fixed)  # checks the fixed part once, with clear errors
        trials = plan_trials(axes, random_trials, seed)
        for overrides in trials:  # every trial's config is valid before the first one trains
            load_config(config, fixed + overrides)
        spec = {"config": str(Path(config).resolve()) if config else None, "overrides": fixed, "axes": axes, "random": random_trials, "seed": seed}
        name = name or "sweep-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"--name {name!r}: must be a plain folder name")
        folder = Path(base.track.root) / name
        if (folder / STATE_FILE).exists():
            sweep = cls.load(folder)
            if sweep.state["spec"] != spec:
                raise TrainyardError(f"sweep {folder} exists with another spec; resume it with --resume {folder}, or pick another --name")
            return sweep
        if folder.exists():
            raise TrainyardError(f"{folder} exists and is not a sweep; pick another --name")
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise TrainyardError(f"track.root={base.track.root}: cannot create sweep folder {folder} ({exc.strerror})") from None
        width = max(3, len(str(len(trials) - 1)))
        state = {
            "spec": spec,
            "created": time.time(),
            "trials": [{"name": f"trial-{i:0{width}d}", "overrides": o, "status": "pending"} for i, o in enumerate(trials)],
        }
        sweep = cls(folder, state)
        sweep.save()
        return sweep

    def trial_config(self, trial: dict[str, Any]):
        spec = self.state["spec"]
        extra = [f"track.root={self.folder}", f"name={trial['name']}"]
        return load_config(spec["config"], spec["overrides"] + trial["overrides"] + extra)

    def run(self, log=print) -> bool:
        """Run every trial not yet done, in order. True when all are done; False when interrupted."""
        from trainyard.engine.run import train
        from trainyard.errors import Interrupted
        from trainyard.track.rundir import read_status

        total = len(self.trials)
        for number, trial in enumerate(self.trials, 1):
            if trial["status"] in ("finished", "failed", "diverged"):
                continue
            cfg = self.trial_config(trial)
            run_dir = self.folder / trial["name"]
            resume = None
            if run_dir.exists():
                if (run_dir / "checkpoints" / "last.pt").exists() and read_status(run_dir).get("status") != "finished":
                    resume = run_dir
                else:  # stopped before its first checkpoint: keep it aside, start the trial again
                    run_dir.rename(run_dir.with_name(f"{trial['name']}.aborted-{int(time.time())}"))
            log(f"== {trial['name']} ({number}/{total}){' resumed' if resume else ''}: {' '.join(trial['overrides'])}")
            trial["status"] = "running"
            self.save()
            try:
                train(cfg, resume=resume)
            except (Interrupted, KeyboardInterrupt):
                trial["status"] = "interrupted"
                self.save()
                return False
            except Exception as exc:  # one failing trial (diverged, out of memory) does not end the sweep
                # diverged (trainer.on_nonfinite=stop): as its run folder says (a multi-process run's error arrives re-created)
                diverged = getattr(exc, "run_status", None) == "diverged" or read_status(run_dir).get("status") == "diverged"
                trial["status"] = "diverged" if diverged else "failed"
                trial["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log(f"   {trial['name']} {trial['status']}: {trial['error']}")
            else:
                trial["status"] = "finished"
            status = read_status(run_dir)
            trial.update(final=status.get("final"), best=status.get("best"), monitor=status.get("monitor"))
            self.save()
        return True

    def summary(self) -> tuple[list[str], list[list[str]], str | None]:
        """The trials' table, best first (by each run's best monitored value; diverged trials last), and the monitored metric."""
        from trainyard.engine.trainer import monitor_mode
        from trainyard.runs.table import find_runs, load_run, runs_table

        names = {t["name"] for t in self.trials}
        runs = [load_run(p, self.folder) for p in find_runs(self.folder, max_depth=1) if p.name in names]
        if not runs:
            return [], [], None
        monitor = next((r.monitor for r in runs if r.monitor), None)
        if monitor is None:
            headers, rows = runs_table(runs, sort="name")
            return headers, rows, None
        cfg = self.trial_config(self.trials[0])
        recorded = next((r.status_json.get("monitor_mode") for r in runs if r.status_json.get("monitor_mode")), None)  # the task's own direction
        mode = recorded or monitor_mode(monitor, cfg.trainer.monitor_mode)
        try:
            headers, rows = runs_table(runs, sort=f"best/{monitor}", reverse=mode == "max")
        except ConfigError:  # no trial got as far as a best value
            headers, rows = runs_table(runs, sort="name")
        return headers, rows, monitor
