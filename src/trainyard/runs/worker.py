"""A sweep worker: claim the study's next trial, train it as its own run, tell the study how it ended; again
until no trial waits and none is left running that this worker might have to take over.

``--workers K`` starts K of them as separate processes, each with its share of the CPU threads (and its own
GPU where there are several); a worker that dies is replaced, and its trial is retried from its last.pt.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from trainyard.errors import Interrupted, TrainyardError
from trainyard.runs.space import distributions, overrides_of
from trainyard.runs.study import Heartbeat, claim, fail_and_retry, reclaim_dead, running_elsewhere

POLL_S = 1.0  # how often an idle worker looks again while other trials run
ENDED = ("finished", "pruned", "diverged")  # a run folder that says so was trained to its end: never again


def trial_name(number: int, width: int) -> str:
    return f"trial-{number:0{width}d}"


def suggest_all(trial: Any, axes: dict[str, list[str]]) -> dict[str, Any]:
    """Every axis's value for this trial: the planned one (grid, random), the retried one, or the sampler's (TPE)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for key, dist in distributions(axes).items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return params


def _run_folder(folder: Path, frozen: Any, original: int, width: int) -> tuple[str, Path | None, dict]:
    """Where this attempt trains: a retried trial continues its run folder from last.pt; a folder that has no
    last.pt (its process died before the first checkpoint) is kept as it is and the attempt gets a new one."""
    from trainyard.track.rundir import read_status

    name = frozen.user_attrs.get("run") or trial_name(original, width)
    run_dir = folder / name
    if not run_dir.exists():
        return name, None, {}
    status = read_status(run_dir)
    if status.get("status") in ENDED:
        return name, run_dir, status  # trained to its end by an attempt that died before telling the study
    if (run_dir / "checkpoints" / "last.pt").exists():
        return name, run_dir, {}
    attempt = 2
    while (folder / f"{trial_name(original, width)}-{attempt}").exists():
        attempt += 1
    return f"{trial_name(original, width)}-{attempt}", None, {}


def say(text: str) -> None:
    print(text, flush=True)


def run_trial(study: Any, spec: dict, folder: Path, config: str | None, trial: Any, log=say) -> str:
    """Train one claimed trial; returns its outcome (finished, pruned, diverged, failed, interrupted)."""
    from optuna.trial import TrialState

    from trainyard.config import load_config
    from trainyard.engine.run import UserParts, train
    from trainyard.errors import Pruned
    from trainyard.runs.prune import PruneCallback, PruneSetupError
    from trainyard.track.rundir import read_status

    frozen = study._storage.get_trial(trial._trial_id)
    original = frozen.system_attrs.get("failed_trial", frozen.number)
    params = suggest_all(trial, spec["axes"])
    overrides = overrides_of(params, spec["axes"])
    name, resume, ended = _run_folder(folder, frozen, original, spec["width"])
    trial.set_user_attr("run", name)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("host", platform.node())
    cfg = load_config(config, spec["overrides"] + overrides + [f"track.root={folder}", f"name={name}"])
    how = " (already trained)" if ended else " resumed" if resume else ""
    log(f"== {name} ({original + 1}/{spec['total']}){how}: {' '.join(overrides)}")

    heartbeat = Heartbeat(study, trial._trial_id)
    try:
        if not ended:
            train(cfg, resume=resume, parts=UserParts(callbacks=[PruneCallback(trial)] if spec.get("prune") else []))
    except PruneSetupError:
        fail_and_retry(study, trial._trial_id)
        raise
    except (Interrupted, KeyboardInterrupt):
        fail_and_retry(study, trial._trial_id)  # queued again: the same command resumes it from last.pt
        return "interrupted"
    except Pruned as exc:
        trial.set_user_attr("status", "pruned")
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        log(f"   {name} pruned: {exc}")
        return "pruned"
    except Exception as exc:  # one failing trial (diverged, out of memory) does not end the sweep
        outcome = (
            "diverged"
            if getattr(exc, "run_status", None) == "diverged" or read_status(folder / name).get("status") == "diverged"
            else "failed"
        )
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        trial.set_user_attr("status", outcome)
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        log(f"   {name} {outcome}: {error}")
        return outcome
    finally:
        heartbeat.stop()
    status = ended or read_status(folder / name)
    outcome = status.get("status", "finished")
    trial.set_user_attr("status", outcome)
    if outcome == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return outcome
    if outcome != "finished":
        study.tell(trial, state=TrialState.FAIL)
        return outcome
    value = status.get("best")
    if value is None:
        value = (status.get("final") or {}).get(status.get("monitor"))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        trial.set_user_attr("error", f"the run reported no value of {status.get('monitor')}")
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    trial.set_user_attr("monitor", status.get("monitor"))
    study.tell(trial, float(value))
    return "finished"


def work(study: Any, spec: dict, folder: Path, config: str | None, log=say) -> bool:
    """Claim and train trials until none is left for this worker. False when interrupted (Ctrl-C, SIGTERM)."""
    while True:
        for name in reclaim_dead(study, folder):
            log(f"{name}: its process died; queued again, to resume from its last.pt")
        got = claim(study, folder)
        if got is None:
            if not running_elsewhere(study, folder):
                return True
            time.sleep(POLL_S)  # others still train: if one of them dies, its trial is this worker's to retry
            continue
        trial, lock = got
        try:
            outcome = run_trial(study, spec, folder, config, trial, log)
        except BaseException:
            # stopped outside the run itself (Ctrl-C while the trial's config loads or as the study is told):
            # queued again, not left running with its claim gone, where no later command would look for it
            fail_and_retry(study, trial._trial_id)
            raise
        finally:
            lock.release()
        if outcome == "interrupted":
            return False


def worker_main(open_args: dict, config: str | None, index: int, threads: int, gpu: str | None, errors: Any) -> None:
    """The body of one ``--workers`` process. Exit 0: nothing left; 130: interrupted; 2: an error for the user (sent on ``errors``)."""
    os.setpgrp()  # Ctrl-C reaches the sweep's main process only, which passes it on to each worker once
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    from trainyard.runs.study import load_study

    torch.set_num_threads(threads)
    try:
        study, spec = load_study(**open_args, worker=index)
        done = work(study, spec, Path(open_args["folder"]), config, log=lambda text: print(f"[worker {index}] {text}", flush=True))
    except TrainyardError as exc:
        errors.put(str(exc))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Interrupted):
        sys.exit(130)
    sys.exit(0 if done else 130)


def run_workers(open_args: dict, config: str | None, workers: int, log=say) -> bool:
    """``workers`` worker processes on this machine, each replaced when it dies (its trial is then retried).
    True when the study has nothing left; False when interrupted."""
    import multiprocessing as mp

    from trainyard.devices import cpu_count

    cpus = cpu_count()
    gpus = _gpu_count()
    threads = max(1, cpus // workers)
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()

    def start(i: int):
        gpu = str(i % gpus) if gpus > 1 else None
        p = ctx.Process(target=worker_main, args=(open_args, config, i, threads, gpu, errors), name=f"sweep-worker-{i}")
        p.start()
        return p

    def terminate(signum, frame):  # SIGTERM: stop as Ctrl-C does (the workers have process groups of their own)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    procs = {i: start(i) for i in range(workers)}
    log(
        f"{workers} workers, {threads} CPU thread{'s' if threads > 1 else ''} each"
        + (f", GPUs {', '.join(str(i % gpus) for i in range(workers))}" if gpus > 1 else "")
    )
    restarts, interrupted, problem = 0, False, None
    try:
        while procs:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if p.exitcode is None:
                    continue
                del procs[i]
                if p.exitcode == 130:
                    interrupted = True
                elif p.exitcode == 2 or not errors.empty():
                    problem = problem or _get(errors)
                elif p.exitcode > 0:  # an error of its own (its traceback is above): another worker would meet it too
                    problem = problem or f"sweep worker {i} stopped with exit code {p.exitcode} (its error is printed above)"
                elif p.exitcode < 0 and not interrupted and problem is None:
                    why = f"signal {signal.Signals(-p.exitcode).name}" if p.exitcode < 0 else f"exit {p.exitcode}"
                    if restarts < 3 * workers:
                        restarts += 1
                        log(f"worker {i} died ({why}); a new worker takes over its trial from its last.pt")
                        procs[i] = start(i)
                    else:
                        log(f"worker {i} died ({why}); not replaced ({restarts} replaced already)")
            if problem is not None and procs:
                _stop(procs.values())
    except KeyboardInterrupt:
        interrupted = True
        _stop(procs.values())
    finally:
        signal.signal(signal.SIGTERM, previous)
    if problem is not None:
        raise TrainyardError(problem)
    return not interrupted


def _get(queue: Any) -> str | None:
    try:
        return queue.get(timeout=1)
    except Exception:
        return None


def _stop(procs) -> None:
    """SIGINT once to each worker (it saves its trial's last.pt and queues the trial again), then wait."""
    procs = [p for p in procs if p.exitcode is None]
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    for p in procs:
        p.join(timeout=120)
        if p.exitcode is None:
            p.kill()
            p.join()


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
