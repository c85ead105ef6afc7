"""Devices, launcher environments (torchrun, SLURM) and ports, and spawning the processes of a run
when no launcher started them."""

from __future__ import annotations

import os
import pickle
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from trainyard.devices import resolve_device  # noqa: F401 - re-exported: strategies import it from here
from trainyard.errors import ConfigError, Interrupted, TrainyardError
from trainyard.files import atomic_write


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- multi-process runs -------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process sits in a multi-process run, as its launcher describes it."""

    launcher: str  # "torchrun", "slurm" or "spawn"
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    restart_count: int = 0  # torchrun: how many times the worker group was restarted so far
    max_restarts: int = 0
    run_id: str | None = None  # torchrun: the rendezvous id, the same across restarts


def launcher_env(environ: Mapping[str, str] | None = None) -> ProcessEnv | None:
    """The process's place in a run started by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) or by
    ``srun`` in a SLURM allocation; ``None`` when no launcher started it (trainyard then spawns the processes)."""
    env = os.environ if environ is None else environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            world = int(env["WORLD_SIZE"])
            return ProcessEnv(
                launcher="torchrun" if "TORCHELASTIC_RUN_ID" in env else "env",
                rank=int(env["RANK"]),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                world_size=world,
                local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT", "29500")),
                restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
                max_restarts=int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")),
                run_id=env.get("TORCHELASTIC_RUN_ID"),
            )
        tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
        if "SLURM_PROCID" in env and tasks and int(tasks) > 1:  # one task per device, started by srun
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
            per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or tasks
            return ProcessEnv(
                launcher="slurm",
                rank=int(env["SLURM_PROCID"]),
                local_rank=int(env.get("SLURM_LOCALID", "0")),
                world_size=int(tasks),
                local_world_size=int(re.match(r"\d+", per_node).group()),
                master_addr=env.get("MASTER_ADDR") or first_host(nodes),
                master_port=int(env.get("MASTER_PORT") or 12000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
            )
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"launcher environment: cannot read the process's rank and world size ({exc})") from None
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    head = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    prefix, ranges, suffix = head.group(1), head.group(2), head.group(3)
    if ranges is None:
        return prefix + suffix
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def process_backend(spec: str, device: torch.device) -> str:
    """``auto``: nccl for CUDA devices, gloo for CPU processes."""
    if spec == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if spec == "nccl" and device.type != "cuda":
        raise ConfigError(f"parallel.backend=nccl: needs CUDA devices (the processes run on {device.type}); use auto or gloo")
    return spec


def cuda_device_ids(devices: int | list | str) -> list[int]:
    """The CUDA device ids that ``parallel.devices`` picks (all of them for ``auto``), checked to exist."""
    count = torch.cuda.device_count()
    if devices == "auto":
        return list(range(count))
    if isinstance(devices, int):
        if devices > count:
            raise ConfigError(f"parallel.devices={devices}: only {count} CUDA device(s) here")
        return list(range(devices))
    ids = []
    for d in devices:
        index = d.split(":", 1)[1] if isinstance(d, str) and d.startswith("cuda:") else d
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise ConfigError(f"parallel.devices={devices}: {d!r} is not a CUDA device id; give ids such as [0, 1] or cuda:0") from None
        if not 0 <= index < count:
            raise ConfigError(f"parallel.devices={devices}: no CUDA device {index} here (ids 0..{count - 1})")
        ids.append(index)
    if len(set(ids)) != len(ids) or not ids:
        raise ConfigError(f"parallel.devices={devices}: list each device once")
    return ids


def uses_cuda(device_spec: str) -> bool:
    """Whether ``trainer.device`` puts multi-process training on CUDA (``auto``: when CUDA is available)."""
    if device_spec == "auto":
        return torch.cuda.is_available()
    kind = device_spec.split(":", 1)[0]
    if kind == "cuda":
        resolve_device(device_spec)  # raises when there is no CUDA
        return True
    if kind != "cpu":
        raise ConfigError(f"trainer.device={device_spec}: multi-process training runs on cuda or cpu")
    return False


class RankFailed(TrainyardError):
    """One rank of a multi-process run failed (its traceback is printed above the message)."""

    exit_code = 1


@dataclass
class RankReport:
    rank: int
    ok: bool
    result: Any = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    exit_code: int = 1
    failed_at: float = 0.0  # when the rank started tearing down: the first to fail tears down first
    user_error: bool = False
    interrupted: dict | None = None
    primary: bool = False  # the rank whose result the run returns (rank 0; a pipeline's last stage)


def spawn(strategy: Any, fn: Callable[..., Any], args: tuple, nprocs: int, grace_s: float, port: int | None = None) -> Any:
    """Run ``fn(strategy, *args)`` in ``nprocs`` fresh processes on 127.0.0.1 (``torch.multiprocessing.spawn``)
    and return the primary's result. The one way a run starts processes (ddp and fsdp ranks, pipeline stages):
    each process enters its place through ``strategy.enter_process(rank, nprocs, port)`` when the strategy has
    one, and reports how it ended in a file the parent reads. When any rank fails, the others get ``grace_s``
    seconds to stop by themselves (a collective with a dead peer fails), then are terminated; the error raised
    names the rank that failed first."""
    import tempfile

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="trainyard-ranks-") as reports_dir:
        context = mp.start_processes(_spawned_rank, args=(strategy, fn, args, nprocs, port, reports_dir), nprocs=nprocs, join=False)
        failure: BaseException | None = None
        interrupts = 0
        while True:
            try:
                if context.join(grace_period=grace_s):
                    break
            except ProcessException as exc:
                failure = exc
                break
            except KeyboardInterrupt:  # the ranks got Ctrl-C too: they save last.pt and stop; a second one gives up waiting
                interrupts += 1
                if interrupts > 1:
                    raise
        reports = {}
        for rank in range(nprocs):
            path = Path(reports_dir) / f"rank-{rank}.pkl"
            if path.is_file():
                reports[rank] = pickle.loads(path.read_bytes())
    if failure is None:
        primary = [r for r in reports.values() if r.primary]
        return primary[0].result if primary else None
    raise _failure_error(failure, reports, nprocs)


def end_rank_process(code: int) -> None:
    """End a rank's process now, its output flushed, without the interpreter's teardown. There, after a run that
    finished and recorded everything, the gloo backend can abort the process ("terminate called without an active
    exception", SIGABRT): a launcher would count the rank failed, and torchrun would restart the finished job."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say on it
            pass
    os._exit(code)


def _spawned_rank(local_rank: int, strategy: Any, fn: Callable[..., Any], args: tuple, nprocs: int, port: int, reports_dir: str) -> None:
    enter = getattr(strategy, "enter_process", None)
    if enter is not None:
        enter(local_rank, nprocs, port)
    else:
        strategy.env = ProcessEnv("spawn", local_rank, local_rank, nprocs, nprocs, "127.0.0.1", port)
    try:
        result = fn(strategy, *args)
        primary = bool(getattr(strategy, "is_primary", local_rank == 0))
        report = RankReport(local_rank, ok=True, result=result if primary else None, primary=primary)
    except BaseException as exc:
        report = failure_report(local_rank, exc, getattr(strategy, "teardown_at", None))
        _write_report(reports_dir, report)
        raise
    _write_report(reports_dir, report)
    end_rank_process(0)


def _write_report(reports_dir: str, report: RankReport) -> None:
    atomic_write(Path(reports_dir) / f"rank-{report.rank}.pkl", pickle.dumps(report))


def failure_report(rank: int, exc: BaseException, failed_at: float | None) -> RankReport:
    import traceback as tb

    report = RankReport(
        rank,
        ok=False,
        error_type=type(exc).__name__,
        message=str(exc),
        traceback="".join(tb.format_exception(exc)),
        exit_code=getattr(exc, "exit_code", 1),
        failed_at=failed_at or time.time(),
        user_error=isinstance(exc, TrainyardError),
    )
    if hasattr(exc, "signum") and hasattr(exc, "run_dir"):  # trainer.Interrupted: SIGINT/SIGTERM, last.pt saved
        report.interrupted = {
            "signum": exc.signum,
            "run_dir": str(exc.run_dir) if exc.run_dir is not None else None,
            "detail": getattr(exc, "detail", None),
        }
    return report


def _failure_error(failure: BaseException, reports: dict[int, RankReport], nprocs: int) -> BaseException:
    failed = sorted((r for r in reports.values() if not r.ok), key=lambda r: r.failed_at)
    interrupted = [r for r in failed if r.interrupted]
    if interrupted and len(interrupted) == len(failed):
        info = interrupted[0].interrupted
        return Interrupted(info["signum"], info["run_dir"], info.get("detail"))
    index = getattr(failure, "error_index", None)
    if index is not None and index not in reports and getattr(failure, "signal_name", None):
        return RankFailed(f"rank {index} of {nprocs} was killed by {failure.signal_name}; the other ranks were stopped")
    if not failed:
        return RankFailed(f"rank {index} of {nprocs} exited with code {getattr(failure, 'exit_code', '?')} without a report")
    first = failed[0]
    if first.user_error:
        alike = len(failed) > 1 and all(r.message == first.message for r in failed)  # every rank's own config check: no rank to name
        error = TrainyardError(first.message if alike else f"rank {first.rank} of {nprocs}: {first.message}")
        error.exit_code = first.exit_code
        return error
    print(f"--- traceback of rank {first.rank} of {nprocs} ---\n{first.traceback}", file=sys.stderr, end="", flush=True)
    return RankFailed(f"rank {first.rank} of {nprocs} failed: {first.error_type}: {first.message.splitlines()[0] if first.message else ''}")
