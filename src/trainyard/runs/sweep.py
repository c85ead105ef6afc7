"""Hyperparameter sweeps on Optuna: a grid, N random trials or N TPE trials, each its own run under
``<track.root>/<sweep>/trial-NNN``.

The sweep is an Optuna study (embedded in ``<sweep>/optuna.journal``, or on a database server with
``--storage URL``). Grid and random trials are all planned and queued when the study is made; every process
that runs the same command, on this machine or another, joins the study and claims the next queued trial
through the storage, so no trial is run twice. A trial interrupted anywhere (Ctrl-C, a killed worker, a lost
machine) is queued again and resumes from its run folder's last.pt; run folders are never renamed or reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trainyard.config import load_config
from trainyard.errors import ConfigError, TrainyardError
from trainyard.runs.space import (
    format_value,
    overrides_of,
    params_of,
    parse_sweep_args,
    plan_trials,
    ranges,
    space_difference,
)  # noqa: F401 - re-exported
from trainyard.runs.study import JOURNAL, SPEC_ATTR, load_study, open_storage, redact, wait_for_spec
from trainyard.runs.worker import run_workers, say, trial_name, work

STATE_FILE = "sweep.json"  # where the study lives (study name, storage without its password): what --resume reads
SEARCHES = ("grid", "random", "tpe")
LAST = ("pruned", "failed", "diverged")  # ranked after every trial that trained to its end, in this order
COMPARED = ("config_sha", "overrides", "axes", "search", "trials", "seed", "prune")  # what must match to join a study


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _direction(cfg) -> tuple[str, str]:
    """The monitored metric and whether the study maximizes it, from the config (the task's default monitor)."""
    from trainyard.engine.trainer import monitor_mode
    from trainyard.tasks import task_class

    task = task_class(cfg.task.name)
    monitor = task.monitor if cfg.trainer.monitor == "auto" else cfg.trainer.monitor
    mode = cfg.trainer.monitor_mode
    if mode == "auto":
        mode = task.monitor_mode if monitor == task.monitor else monitor_mode(monitor, "auto")
    return monitor, "maximize" if mode == "max" else "minimize"


def _check_trials(config: str | None, fixed: list[str], axes: dict[str, list[str]], planned: list[list[str]] | None) -> None:
    """Every trial's config is valid before the first one trains (TPE: each list value and each range's ends)."""
    if planned is None:
        spans = ranges(axes)
        values = {
            k: [format_value(spans[k][0], spans[k][1]), format_value(spans[k][0], spans[k][2])] if k in spans else v
            for k, v in axes.items()
        }
        planned = [[f"{k}={value if k == key else values[k][0]}" for k in axes] for key in axes for value in values[key]]
    for overrides in planned:
        load_config(config, fixed + overrides)


class Sweep:
    def __init__(self, folder: Path, study: Any, spec: dict, name: str, storage: str | None, config: str | None):
        self.folder = folder
        self.study = study
        self.spec = spec
        self.name = name
        self.storage = storage
        self.config = config  # this machine's path of the run config (the spec holds its contents' hash)

    # --- making or joining the study ------------------------------------------------------
    @classmethod
    def create(
        cls,
        config: str | None,
        items: list[str],
        random_trials: int | None,
        seed: int,
        name: str | None,
        *,
        search: str | None = None,
        trials: int | None = None,
        storage: str | None = None,
        prune: str | None = None,
    ) -> "Sweep":
        """Make the sweep's study, or join the one of this name (the same search space and settings, else one line naming what differs)."""
        import optuna

        from trainyard.runs.prune import PRUNERS

        search, total_trials = _search(search, random_trials, trials)
        if prune is not None and prune not in PRUNERS:
            raise ConfigError(f"--prune {prune}: not a pruner; pruners: {', '.join(PRUNERS)}")
        fixed, axes = parse_sweep_args(items)
        if not axes:
            raise ConfigError("nothing to sweep: give at least one key with several values, e.g. optim.lr=0.1,0.01")
        base = load_config(config, fixed)  # checks the fixed part once, with clear errors
        planned = plan_trials(axes, total_trials if search == "random" else None, seed) if search != "tpe" else None
        _check_trials(config, fixed, axes, planned)
        monitor, direction = _direction(base)
        if prune is not None and base.parallel.strategy in ("ddp", "pipeline"):  # every process would have to agree on the stop
            raise ConfigError(
                f"--prune {prune}: trials under parallel.strategy={base.parallel.strategy} run in several processes and cannot be pruned; "
                "use single, dp or model, or sweep without --prune"
            )
        if prune is not None:
            has_val = base.data.val_fraction > 0 or base.data.val_path is not None
            if not has_val or not monitor.startswith("val/"):
                raise ConfigError(
                    f"--prune {prune}: needs a validation split to compare trials by (data.val_fraction={base.data.val_fraction}, "
                    f"trainer.monitor={monitor}); set data.val_fraction above 0 and monitor a val/ metric"
                )
        compared = {
            "config_sha": _sha(Path(config).read_bytes()) if config else None,
            "overrides": [
                f for f in fixed if not f.partition("=")[0].strip().startswith("track.root")
            ],  # where trials are kept may differ per machine
            "axes": axes,
            "search": search,
            "trials": total_trials,
            "seed": seed,
            "prune": prune,
        }
        total = len(planned) if planned is not None else total_trials
        spec = {
            **compared,
            "config": str(Path(config).resolve()) if config else None,
            "total": total,
            "width": max(3, len(str(total - 1))),
            "epochs": base.trainer.epochs,
            "monitor": monitor,
            "direction": direction,
            "version": 1,
        }
        name = name or "sweep-" + _sha(json.dumps(compared, sort_keys=True).encode())[:8]  # the same command: the same study
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"--name {name!r}: must be a plain folder name")
        folder = Path(base.track.root) / name
        if storage is None and folder.is_dir() and not (folder / JOURNAL).exists() and any(folder.iterdir()):
            hint = " (a sweep of an older trainyard: its sweep.json is not an Optuna study)" if (folder / STATE_FILE).exists() else ""
            raise TrainyardError(f"{folder} exists and is not a sweep{hint}; pick another --name")
        store = open_storage(storage, folder) if storage is not None else None  # a database that cannot be reached: nothing made here
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainyardError(f"track.root={base.track.root}: cannot create sweep folder {folder} ({exc.strerror})") from None
        store = store or open_storage(None, folder)
        try:
            study = optuna.create_study(study_name=name, storage=store, direction=direction)
            made = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=store)
            made = False
        if made:
            for overrides in planned if planned is not None else [[]] * total:
                study.enqueue_trial(params_of(overrides, axes))
            study.set_user_attr(SPEC_ATTR, spec)  # last: a joiner waits for it, so it never sees half the queue
        else:
            theirs = wait_for_spec(study)
            _same_spec(name, compared, theirs)
            spec = {**theirs, "config": spec["config"]}
        (folder / STATE_FILE).write_text(
            json.dumps({"study": name, "storage": redact(storage) if storage else JOURNAL}, indent=2) + "\n", encoding="utf-8"
        )
        study, spec = load_study(folder, storage, name, worker=0, joined=not made)
        return cls(folder, study, spec, name, storage, config)

    @classmethod
    def load(cls, folder: Path | str, storage: str | None = None) -> "Sweep":
        """The sweep of a folder (``--resume SWEEP_DIR``); a study on a database server needs its ``--storage`` again."""
        folder = Path(folder)
        path = folder / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            name = state["study"]
        except FileNotFoundError:
            raise TrainyardError(f"--resume {folder}: not a sweep folder (no {STATE_FILE})") from None
        except (ValueError, KeyError, TypeError):
            raise TrainyardError(f"{path}: unreadable (not a sweep of this trainyard)") from None
        if storage is None and state.get("storage") != JOURNAL:
            raise TrainyardError(f"--resume {folder}: its study is on {state.get('storage')}; give --storage URL (with the password) too")
        study, spec = load_study(folder, storage, name, worker=0, joined=True)
        return cls(folder, study, spec, name, storage, spec.get("config"))

    # --- running ------------------------------------------------------------------------
    def run(self, log=say, workers: int = 1) -> bool:
        """Claim and train trials until the study has none left (also those of other processes, which this one
        takes over if they die). True when done; False when interrupted."""
        if workers > 1:
            open_args = {"folder": str(self.folder), "storage": self.storage, "name": self.name, "joined": True}
            return run_workers(open_args, self.config, workers, log)
        return work(self.study, self.spec, self.folder, self.config, log)

    @property
    def trials(self) -> list[dict[str, Any]]:
        """One entry per planned trial, its latest attempt: name (run folder), overrides, status, error, number."""
        from optuna.trial import TrialState

        latest: dict[int, Any] = {}
        for t in self.study.get_trials(deepcopy=False):
            latest[t.system_attrs.get("failed_trial", t.number)] = t  # retries come later in number order
        out = []
        for number, t in sorted(latest.items()):
            if t.state == TrialState.COMPLETE:
                status = "finished"
            elif t.state == TrialState.PRUNED:
                status = "pruned"
            elif t.state == TrialState.FAIL:
                status = t.user_attrs.get("status", "failed")
            elif t.state == TrialState.RUNNING:
                status = "running"
            else:
                status = "interrupted" if "failed_trial" in t.system_attrs else "pending"
            overrides = t.user_attrs.get("overrides") or overrides_of(t.system_attrs.get("fixed_params") or t.params, self.spec["axes"])
            entry = {
                "name": t.user_attrs.get("run") or trial_name(number, self.spec["width"]),
                "overrides": overrides,
                "status": status,
                "number": number,
                "latest": t.number,
            }
            if t.user_attrs.get("error"):
                entry["error"] = t.user_attrs["error"]
            if t.value is not None:
                entry["value"] = t.value
            out.append(entry)
        return out

    def summary(self) -> tuple[list[str], list[list[str]], str | None]:
        """The trials' table, best first (by each run's best monitored value; pruned, failed, diverged trials last), and the
        monitored metric."""
        from trainyard.runs.table import load_run, runs_table

        runs = []
        for trial in self.trials:
            path = self.folder / trial["name"]
            if (path / "config.yaml").is_file():
                try:
                    runs.append(load_run(path, self.folder, tolerant=True))
                    continue
                except TrainyardError:
                    pass
            if trial["status"] != "pending":  # trained on another machine, its folder there: what the study holds
                runs.append(self._study_run(trial))
        if not runs:
            return [], [], None
        monitor = next((r.monitor for r in runs if r.monitor), None) or self.spec.get("monitor")
        recorded = next(
            (r.status_json.get("monitor_mode") for r in runs if r.status_json.get("monitor_mode")), None
        )  # the task's own direction
        mode = recorded or ("max" if self.spec.get("direction") == "maximize" else "min")
        try:
            headers, rows = runs_table(runs, sort=f"best/{monitor}", reverse=mode == "max")
        except ConfigError:  # no trial got as far as a best value
            headers, rows = runs_table(runs, sort="name")
        rank = {status: i + 1 for i, status in enumerate(LAST)}
        rows.sort(key=lambda row: rank.get(row[1], 0))  # stable: best first within each group
        return headers, rows, monitor

    def _study_run(self, trial: dict[str, Any]):
        """A table row for a trial whose run folder is not here: its config and value as the study holds them."""
        import yaml

        from trainyard.config import to_yaml
        from trainyard.runs.table import Run, flatten

        config = flatten(yaml.safe_load(to_yaml(load_config(self.config, self.spec["overrides"] + trial["overrides"]))) or {})
        monitor = self.spec.get("monitor")
        value = trial.get("value")
        t = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial["latest"])
        started = t.datetime_start.timestamp() if t.datetime_start else None
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        metrics = {f"best/{monitor}": value} if value is not None and trial["status"] == "finished" else {}
        return Run(
            self.folder / trial["name"],
            trial["name"],
            trial["status"],
            started,
            duration,
            config,
            metrics,
            monitor,
            value,
            {"monitor": monitor},
            None,
        )


def _search(search: str | None, random_trials: int | None, trials: int | None) -> tuple[str, int | None]:
    """``--search`` with ``--trials``, or the older ``--random N``: (search, number of trials)."""
    if random_trials is not None and random_trials < 1:
        raise ConfigError(f"--random {random_trials}: must be >= 1")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: must be >= 1")
    if search is not None and search not in SEARCHES:
        raise ConfigError(f"--search {search}: not a search; searches: {', '.join(SEARCHES)}")
    if random_trials is not None:
        if search not in (None, "random") or (trials is not None and trials != random_trials):
            raise ConfigError(f"--random {random_trials}: is --search random --trials {random_trials}; give one or the other")
        return "random", random_trials
    search = search or ("random" if trials is not None else "grid")
    if search == "grid" and trials is not None:
        raise ConfigError(f"--trials {trials}: a grid runs every combination; for a number of trials use --search random or --search tpe")
    if search in ("random", "tpe") and trials is None:
        raise ConfigError(f"--search {search}: needs --trials N")
    return search, trials


def _same_spec(name: str, mine: dict, theirs: dict) -> None:
    """Joining a study needs the same search space and settings: one line naming what differs."""
    differ = space_difference(mine["axes"], theirs.get("axes") or {})
    if differ:
        raise TrainyardError(f"sweep {name} exists with another search space (keys that differ: {', '.join(differ)}); pick another --name")
    fixed = {f.partition("=")[0].strip(): f for f in mine["overrides"]}
    other = {f.partition("=")[0].strip(): f for f in theirs.get("overrides") or []}
    keys = sorted(k for k in set(fixed) | set(other) if fixed.get(k) != other.get(k))
    settings = [f"--{k}" for k in ("search", "trials", "seed", "prune") if mine[k] != theirs.get(k)]
    if mine["config_sha"] != theirs.get("config_sha"):
        settings.append("the config file's contents")
    if keys or settings:
        raise TrainyardError(f"sweep {name} exists with other settings (differ: {', '.join(keys + settings)}); pick another --name")
