"""Reading run folders back: find them, tell their real status, and lay several out as one sortable table."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainyard.config import suggest
from trainyard.errors import ConfigError, TrainyardError

DIVERGED = "diverged"  # the status of a run stopped by a non-finite loss or weights

# Config keys that say where a run is recorded, not how it trains: never shown as hyperparameters.
NOT_HPARAMS = ("name", "track.")


@dataclass
class Run:
    path: Path
    name: str  # relative to the folder that was listed, e.g. ``sweep1/trial-003``
    status: str
    started: float | None
    duration_s: float | None
    config: dict[str, Any]  # flat: {"optim.lr": 0.01, ...}
    metrics: dict[str, float]  # final metrics (status.json), or the latest logged ones while running
    monitor: str | None = None
    best: float | None = None
    status_json: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why a file of the folder could not be read; its status is then ``unreadable``


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except (OSError, OverflowError):
        return False
    return True


def real_status(status: dict[str, Any], path: Path) -> str:
    """status.json says ``running`` until the process writes its end; a process killed hard (SIGKILL, OOM,
    power loss) never does. On this host a dead pid means the run stopped: ``interrupted`` when it can be
    resumed from checkpoints/last.pt, else ``failed``."""
    value = status.get("status", "unknown")
    env = status.get("environment") or {}
    if value == "running" and env.get("host") == platform.node() and isinstance(env.get("pid"), int) and not _alive(env["pid"]):
        return "interrupted" if (path / "checkpoints" / "last.pt").exists() else "failed"
    return value


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "status.json").is_file() or (path / "metrics.jsonl").is_file())


def find_runs(root: Path, max_depth: int = 3) -> list[Path]:
    """Run folders at or under ``root`` (sweeps nest their trials one level down)."""
    root = Path(root)
    if not root.is_dir():
        raise TrainyardError(f"runs folder {root} not found")
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in children:
            if is_run_dir(child):
                found.append(child)
            elif depth + 1 < max_depth and child.name not in ("checkpoints", "wandb", "media"):
                stack.append((child, depth + 1))
    return sorted(found)


def _mark(exc: Exception) -> str:
    """``line N: what`` for a YAML or JSON error, else the error's first line."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:  # yaml.MarkedYAMLError
        return f"line {mark.line + 1}: {getattr(exc, 'problem', None) or 'not YAML'}"
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}: not JSON ({exc.msg})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _read_config(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        tree = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: UnicodeDecodeError
        return {}, f"config.yaml {_mark(exc)}" if getattr(exc, "problem_mark", None) else f"config.yaml: {_mark(exc)}"
    if tree is not None and not isinstance(tree, dict):
        return {}, f"config.yaml: not a mapping of settings (a {type(tree).__name__})"
    return flatten(tree or {}), None


def _read_status(path: Path) -> tuple[dict[str, Any], str | None]:
    file = path / "status.json"
    if not file.is_file():
        return {}, None  # a run that has logged metrics but not written its status yet
    try:
        status = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, f"status.json {_mark(exc)}" if isinstance(exc, json.JSONDecodeError) else f"status.json: {_mark(exc)}"
    if not isinstance(status, dict):
        return {}, f"status.json: not a JSON object (a {type(status).__name__})"
    return status, None


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """metrics.jsonl's rows, and what was wrong with it: a line that is not a JSON object is skipped and named.
    Half a line at the very end is left out quietly, as a reader of a run still writing sees it."""
    file = path / "metrics.jsonl"
    if not file.exists():
        return [], None
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        return [], f"metrics.jsonl: {_mark(exc)}"
    rows, problem = [], None
    for n, line in enumerate(text[: text.rfind("\n") + 1].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problem = problem or f"metrics.jsonl line {n}: not JSON ({getattr(exc, 'msg', exc)}; a row cut short?)"
            continue
        if not isinstance(row, dict):
            problem = problem or f"metrics.jsonl line {n}: not a JSON object"
            continue
        rows.append(row)
    return rows, problem


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_run(path: Path, root: Path | None = None, *, tolerant: bool = False) -> Run:
    """One run folder read back. A file of it that cannot be read (``config.yaml``, ``status.json``, or
    ``metrics.jsonl`` where the table needs it: no final metrics in status.json) raises a one-line
    :class:`TrainyardError`; with ``tolerant`` the run comes back instead with status ``unreadable``, the
    reason in ``problem`` and whatever the other files hold (``trainyard runs`` lists a folder of runs
    whatever one of them holds). A corrupt status.json counts only with ``tolerant``; without it the run's
    status is ``unknown``, as it always was."""
    path = Path(path)
    if not is_run_dir(path):
        raise TrainyardError(f"{path}: not a run folder (no config.yaml with status.json or metrics.jsonl)")
    status, status_problem = _read_status(path)
    config, config_problem = _read_config(path)
    if config_problem and not tolerant:
        raise TrainyardError(f"{path / 'config.yaml'}: unreadable ({config_problem.removeprefix('config.yaml').lstrip(': ')})")
    value = str(real_status(status, path))
    started = _number(status.get("started"))
    duration = _number(status.get("duration_s"))
    final = status.get("final")
    metrics = dict(final) if isinstance(final, dict) else {}
    metrics_problem = None
    if not metrics:  # still running, or stopped before the end: the latest logged value of each metric
        rows, metrics_problem = _read_metrics(path)
        if metrics_problem and not tolerant:
            raise TrainyardError(f"{path / 'metrics.jsonl'}: unreadable ({metrics_problem.removeprefix('metrics.jsonl').lstrip(': ')})")
        for row in rows:
            metrics.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
    if duration is None and started is not None:
        if value == "running":
            duration = time.time() - started
        elif (path / "metrics.jsonl").exists():
            duration = (path / "metrics.jsonl").stat().st_mtime - started
    problem = config_problem or (status_problem if tolerant else None) or metrics_problem
    if problem:
        value = "unreadable"
    name = str(path.relative_to(root)) if root is not None and path != root else path.name
    monitor = status.get("monitor") if isinstance(status.get("monitor"), str) else None
    return Run(path, name, value, started, duration, config, metrics, monitor, _number(status.get("best")), status, problem)


def resolve_run(arg: str, default_root: str = "runs") -> Path:
    """A run given as a folder, or as a name under ./runs."""
    path = Path(arg)
    if not path.is_dir() and (Path(default_root) / arg).is_dir():
        path = Path(default_root) / arg
    if not path.is_dir():
        raise TrainyardError(f"run {arg}: no such folder (give a run folder, e.g. runs/NAME)")
    if not is_run_dir(path):
        raise TrainyardError(f"{path}: not a run folder (no config.yaml with status.json or metrics.jsonl)")
    return path


def differing_hparams(runs: list[Run]) -> list[str]:
    """Config keys whose value is not the same in every run (keys missing somewhere count as differing)."""
    keys = sorted({k for r in runs for k in r.config if not k.startswith(NOT_HPARAMS)})
    sentinel = object()
    return [k for k in keys if len({repr(r.config.get(k, sentinel)) for r in runs}) > 1]


def metric_columns(runs: list[Run]) -> list[str]:
    """The metrics' columns. A metric stored with its interval (``test/accuracy/low``, ``/high``, ``/count``) gets
    two more: ``test/accuracy/ci`` (``0.827-0.898``, sorted by its lower end) and ``test/accuracy/count``."""
    names = {k for r in runs for k in r.metrics if k.startswith(("best/", "test/", "val/")) and not is_interval_key(k)}
    names |= {
        f"{k.rsplit('/', 1)[0]}/{part}"
        for r in runs
        for k in r.metrics
        if k.endswith("/low") and is_interval_key(k)
        for part in ("ci", "count")
    }
    order = {"best/": 0, "test/": 1, "val/": 2}
    return sorted(names, key=lambda k: (order[k[: k.index("/") + 1]], k))


def format_time(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def runs_table(runs: list[Run], sort: str = "started", reverse: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows: name, status, started, duration, the differing hparams, the metrics."""
    readable = [r for r in runs if r.config or not r.problem]  # a config.yaml that could not be read differs in nothing
    hparams = differing_hparams(readable) if len(readable) > 1 else []
    metrics = metric_columns(runs)
    headers = ["name", "status", "started", "duration", *hparams, *metrics]
    raw = [
        [r.name, r.status, r.started, r.duration_s, *(r.config.get(k) for k in hparams), *(metric_value(r.metrics, k) for k in metrics)]
        for r in runs
    ]

    column = sort_column(headers, sort)
    index = headers.index(column)
    # by a metric, a diverged run (trainer.on_nonfinite=stop) ranks after every other: its values are not results
    by_metric = column in metrics
    present = [row for row in raw if row[index] is not None and not (by_metric and row[1] == DIVERGED)]
    missing = [row for row in raw if row[index] is None and not (by_metric and row[1] == DIVERGED)]  # always last
    diverged = [row for row in raw if by_metric and row[1] == DIVERGED]

    def key(row):
        v = row[index]
        return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))

    present.sort(key=key, reverse=reverse)
    rows = []
    run_of = {id(row): run for row, run in zip(raw, runs)}
    first_metric = 4 + len(hparams)
    for row in present + missing + diverged:
        cells = [format_value(v) for v in row[4:first_metric]] + [metric_cell(run_of[id(row)].metrics, k) for k in metrics]
        rows.append([row[0], row[1], format_time(row[2]), format_duration(row[3]), *cells])
    return headers, rows


INTERVAL_PARTS = ("correct", "count", "low", "high")  # test/<metric>/<part>, as trainyard.tasks.interval_entries writes them


def is_interval_key(key: str) -> bool:
    """``test/accuracy/low`` and its kin: parts of a metric's interval, not metrics of their own (read here without
    importing torch, which trainyard.tasks needs)."""
    head, _, part = key.rpartition("/")
    return part in INTERVAL_PARTS and head.count("/") >= 1


def metric_value(metrics: dict[str, Any], column: str) -> Any:
    """A metric column's value to sort by: the metric, or for ``<metric>/ci`` the interval's lower end."""
    if column.endswith("/ci"):
        return metrics.get(column[: -len("ci")] + "low")
    return metrics.get(column)


def metric_cell(metrics: dict[str, Any], column: str) -> str:
    """A metric column's cell: ``0.9415``; ``0.918-0.958`` for a 95% interval; ``359`` for a count."""
    if column.endswith("/ci"):
        low, high = metrics.get(column[: -len("ci")] + "low"), metrics.get(column[: -len("ci")] + "high")
        return f"{low:.3f}-{high:.3f}" if all(isinstance(v, (int, float)) for v in (low, high)) else "-"
    value = metrics.get(column)
    if column.endswith("/count") and isinstance(value, (int, float)):
        return str(int(round(value)))
    return format_value(value)


def sort_column(headers: list[str], sort: str) -> str:
    """``--sort`` takes a column name, or an unambiguous ending of one (``lr`` for ``optim.lr``)."""
    if sort in headers:
        return sort
    matches = [h for h in headers if h.endswith(("." + sort, "/" + sort))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"--sort {sort}: ambiguous, matches {', '.join(matches)}")
    raise ConfigError(f"--sort {sort}: no such column; columns: {', '.join(headers)}{suggest(sort, headers)}")


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [i >= 4 and all(_is_number(r[i]) or r[i] == "-" for r in rows) for i in range(len(headers))]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
