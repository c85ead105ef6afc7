"""Where a sweep's Optuna study lives, and how its trials are claimed by many processes.

The study is embedded by default: ``<sweep>/optuna.journal``, Optuna's journal file storage, which several
processes of one machine share safely. ``--storage URL`` puts it on a database server (any URL Optuna's
RDBStorage takes: ``postgresql://``, ``mysql://``, ``sqlite:///``) for several machines.

A trial is claimed through the storage: the WAITING -> RUNNING change of one trial succeeds for one process
only. Before it tries, the process takes an OS lock on ``<sweep>/.claims/<number>/.lock`` and holds it until
the trial is told, so a RUNNING trial whose lock file is here but free belongs to a process that died (the
kernel drops a dead process's locks): it is failed and queued again, the way Optuna's
``RetryHeartbeatStaleTrialCallback`` queues a trial whose heartbeat stopped. On a database server every
running trial also sends a heartbeat, so a trial of a machine that was lost is retried too.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from trainyard.errors import TrainyardError

JOURNAL = "optuna.journal"
CLAIMS = ".claims"
MAX_RETRY = 3  # a trial whose process keeps dying is left failed after this many retries
HEARTBEAT_S = 20  # database storages: a running trial's heartbeat; stale (retried) after GRACE_S without one
GRACE_S = 60


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*is already reported")  # a resumed trial repeats the epoch it was stopped in
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def redact(url: str) -> str:
    """The URL without its password: ``postgresql://me:***@host/db``."""
    if "@" not in url:
        return url
    credentials, host = url.rsplit("@", 1)
    scheme, sep, user = credentials.rpartition("//")
    if ":" not in user:
        scheme, sep, user = "", "", credentials
        if ":" not in user or "//" in user:
            return url
    return f"{scheme}{sep}{user.split(':', 1)[0]}:***@{host}"


def open_storage(url: str | None, folder: Path) -> Any:
    """The study's storage: the embedded journal in ``folder``, or the database at ``url``. A URL that is
    malformed, names a missing driver or cannot be reached is one line: the URL without its password, what was tried."""
    quiet_optuna()
    if url is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    shown = redact(url)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception as exc:
        raise TrainyardError(
            f"--storage {shown}: not a database URL ({_first_line(exc)}); e.g. postgresql://USER:PASSWORD@HOST:5432/DB or "
            "sqlite:///sweeps.db"
        ) from None
    if parsed.drivername == "postgresql":  # no driver named: the one installed (SQLAlchemy 2.1 assumes psycopg 3, 2.0 psycopg2)
        import importlib.util

        driver = next((d for d in ("psycopg", "psycopg2") if importlib.util.find_spec(d) is not None), None)
        if driver is None:
            raise TrainyardError(f"--storage {shown}: the postgresql driver is not installed (pip install psycopg2-binary)")
        parsed = parsed.set(drivername=f"postgresql+{driver}")
        url = parsed.render_as_string(hide_password=False)
    connect_args = {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    where = f"{parsed.host}:{parsed.port or 'default port'}" if parsed.host else parsed.database
    last: Exception | None = None
    for attempt in range(3):  # two processes creating the tables of a fresh database at once: one of them retries
        try:
            return RDBStorage(
                url,
                engine_kwargs={"connect_args": connect_args} if connect_args else None,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True),
            )
        except ImportError:
            driver = {"postgresql": "psycopg2-binary", "mysql": "PyMySQL"}.get(parsed.get_backend_name(), f"the {parsed.drivername} driver")
            raise TrainyardError(
                f"--storage {shown}: the {parsed.get_backend_name()} driver is not installed (pip install {driver})"
            ) from None
        except Exception as exc:  # sqlalchemy's OperationalError (refused, unknown host, bad password), ArgumentError...
            last = exc
            if "already exists" not in str(exc) and "duplicate" not in str(exc).lower():
                break
            time.sleep(0.5 + attempt)
    raise TrainyardError(
        f"--storage {shown}: cannot open the study's database (tried {parsed.get_backend_name()} at {where}): {_first_line(last)}"
    ) from None


def _first_line(exc: Exception | None) -> str:
    text = str(exc or "").strip()
    text = re.sub(r"\(Background on this error at:.*?\)", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return re.sub(r"^\([\w.]+\)\s*", "", line)[:240]


def heartbeat_enabled(study: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


class Heartbeat:
    """A thread that records a running trial's heartbeat (database storages) until stopped."""

    def __init__(self, study: Any, trial_id: int):
        self.storage = study._storage
        self.trial_id = trial_id
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        if heartbeat_enabled(study):
            self.storage.record_heartbeat(trial_id)
            self.thread = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)
            self.thread.start()

    def _beat(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a database hiccup: the next beat tries again; the grace period covers a few
                pass

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def _lock(folder: Path, number: int):
    """The claim lock of trial ``number``, or None when another live process holds it."""
    from trainyard.track.rundir import RunLock

    where = folder / CLAIMS / str(number)
    where.mkdir(parents=True, exist_ok=True)
    try:
        return RunLock(where).acquire()
    except TrainyardError:
        return None


def retry(study: Any, trial: Any) -> None:
    """Queue a failed trial's params again, as Optuna's heartbeat retry does (its number in ``failed_trial``)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)(study, trial)


def fail_and_retry(study: Any, trial_id: int) -> bool:
    """Fail a running trial and queue it again; False when another process already ended it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    retry(study, study._storage.get_trial(trial_id))
    return True


def reclaim_dead(study: Any, folder: Path) -> list[str]:
    """Fail and queue again every running trial whose process died: its claim lock here is free, or (database
    storages) its heartbeat stopped. Returns their run folders' names."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    found: list[str] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not (folder / CLAIMS / str(trial.number) / ".lock").exists():
            continue  # claimed on another machine (or not yet locked by a claim in progress elsewhere)
        lock = _lock(folder, trial.number)
        if lock is None:
            continue  # its process lives
        try:
            if lock.fd is None:
                continue  # a file system without locks: liveness cannot be told here
            if fail_and_retry(study, trial._trial_id):
                found.append(trial.user_attrs.get("run", f"trial {trial.number}"))
        finally:
            lock.release()
    if heartbeat_enabled(study):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
        fail_stale_trials(study)
        found += [
            t.user_attrs.get("run", f"trial {t.number}")
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if t.number not in before
        ]
    return found


def claim(study: Any, folder: Path):
    """The next waiting trial, claimed for this process: ``(optuna.Trial, lock)``, or None when none waits."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        lock = _lock(folder, frozen.number)
        if lock is None:
            continue
        try:
            won = study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING)
        except UpdateFinishedTrialError:
            won = False
        if won:
            return optuna.Trial(study, frozen._trial_id), lock
        lock.release()
    return None


def running_elsewhere(study: Any, folder: Path) -> list[int]:
    """Running trials this process may yet have to retry: held by a live process here, or (database storages) on any machine."""
    from optuna.trial import TrialState

    beats = heartbeat_enabled(study)
    return [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if beats or (folder / CLAIMS / str(t.number) / ".lock").exists()
    ]


SPEC_ATTR = "trainyard"  # the study's user attribute holding the sweep's spec (search space, fixed overrides, search)


def build_sampler(spec: dict, worker: int = 0, joined: bool = False) -> Any:
    """Grid and random trials are all planned (queued) when the study is made; TPE samples each trial as it starts.
    TPE's seed differs per process, so parallel workers do not draw the same first trials."""
    import optuna

    seed = spec["seed"] + 7919 * worker + (os.getpid() if joined else 0)
    if spec["search"] == "tpe":
        startup = min(10, max(2, spec["total"] // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


def load_study(folder: str | Path, storage: str | None, name: str, worker: int = 0, joined: bool = True) -> tuple[Any, dict]:
    """An existing sweep's study and spec (its sampler and pruner as the spec says)."""
    import optuna

    from trainyard.runs.prune import build_pruner

    folder = Path(folder)
    store = open_storage(storage, folder)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        where = f"--storage {redact(storage)}" if storage else f"{folder / JOURNAL}"
        raise TrainyardError(f"no sweep named {name} in {where}") from None
    spec = wait_for_spec(study)
    study = optuna.load_study(
        study_name=name, storage=store, sampler=build_sampler(spec, worker, joined), pruner=build_pruner(spec.get("prune"), spec["epochs"])
    )
    return study, spec


def wait_for_spec(study: Any, timeout_s: float = 60.0) -> dict:
    """The spec, which the process that made the study writes once every planned trial is queued."""
    deadline = time.monotonic() + timeout_s
    while True:
        spec = study.user_attrs.get(SPEC_ATTR)
        if spec is not None:
            return spec
        if time.monotonic() > deadline:
            raise TrainyardError(
                f"sweep {study.study_name}: its study has no trainyard spec (made by another tool, or its maker stopped while queueing "
                "the trials); pick another --name"
            )
        time.sleep(0.5)
