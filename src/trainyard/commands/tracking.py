"""``trainyard runs | compare | report | board | sweep``: tracking beyond one run."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from trainyard.errors import ConfigError


def runs(args: argparse.Namespace) -> int:
    """The runs under a folder as one table. A run whose files cannot be read is listed as ``unreadable``,
    with the reason on a note line, and never hides the others."""
    from trainyard.runs.table import find_runs, format_table, load_run, runs_table

    root = Path(args.root or "runs")
    found = [load_run(p, root, tolerant=True) for p in find_runs(root)]
    if not found:
        print(f"no runs in {root}")
        return 0
    headers, rows = runs_table(found, sort=args.sort, reverse=args.reverse)
    print(format_table(headers, rows), flush=True)
    for run in found:
        if run.problem:
            print(f"note: {run.name}: unreadable: {run.problem}", file=sys.stderr)
    return 0


def compare(args: argparse.Namespace) -> int:
    from trainyard.runs.report import compare_curves
    from trainyard.runs.table import load_run, resolve_run

    paths = [resolve_run(r) for r in args.runs]
    loaded = [load_run(p) for p in paths]
    if len({r.name for r in loaded}) < len(loaded):  # same folder name under different parents: show the paths
        for run, path in zip(loaded, paths):
            run.name = str(path)
    if args.metric is None:  # the metric the runs picked their best checkpoint by (val/accuracy, val/loss, ...)
        from trainyard.track.rundir import read_status

        args.metric = next((m for m in (read_status(p).get("monitor") for p in paths) if m), "val/accuracy")
    missing = compare_curves(loaded, args.metric, Path(args.out))
    for name in missing:
        print(f"note: {name} logged no {args.metric}", file=sys.stderr)
    print(f"wrote {args.out}: {args.metric} of {len(loaded) - len(missing)} run{'s' if len(loaded) - len(missing) != 1 else ''}")
    return 0


def report(args: argparse.Namespace) -> int:
    from trainyard.runs.report import write_report
    from trainyard.runs.table import load_run, resolve_run

    run = load_run(resolve_run(args.run))
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the report is an HTML file (.html)")
    write_report(run, out)
    print(f"wrote {out} (self-contained: open it in any browser)")
    return 0


def board(args: argparse.Namespace) -> int:
    from trainyard.runs.board import start_tensorboard, stop

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be 0 (a free port) to 65535")
    proc, url = start_tensorboard(Path(args.root), port=args.port)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server with us
    try:
        print(f"TensorBoard on {args.root}: {url}  (Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        signal.signal(signal.SIGTERM, previous)


def sweep(args: argparse.Namespace) -> int:
    import os

    from trainyard.commands import split_config_args
    from trainyard.runs.study import JOURNAL, redact
    from trainyard.runs.sweep import Sweep
    from trainyard.runs.table import format_table

    # devices.cpu_count, written out: importing it imports torch, and this check comes before anything heavy
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not 1 <= args.workers <= cpus:
        raise ConfigError(f"--workers {args.workers}: this machine has {cpus} CPU{'s' if cpus > 1 else ''}; give 1 to {cpus}")
    if args.resume:
        if args.overrides or args.random is not None or args.name or args.search or args.trials is not None or args.prune:
            raise ConfigError("--resume takes the sweep folder only (and --storage, --workers): the study holds the spec")
        job = Sweep.load(Path(args.resume), storage=args.storage)
    else:
        config, items = split_config_args(args.overrides)
        job = Sweep.create(
            config, items, args.random, args.seed, args.name, search=args.search, trials=args.trials, storage=args.storage, prune=args.prune
        )
    todo = sum(t["status"] not in ("finished", "failed", "diverged", "pruned") for t in job.trials)
    where = f"study {job.name} on {redact(args.storage)}" if args.storage else f"study {job.name} in {job.folder / JOURNAL}"
    print(f"sweep {job.folder}: {len(job.trials)} trials, {todo} to run ({where})", flush=True)
    done = job.run(workers=args.workers)
    headers, rows, monitor = job.summary()
    if rows:
        print(f"\nsweep {job.folder}" + (f", best {monitor} first:" if monitor else ":"))
        print(format_table(headers, rows))
    resume = f"trainyard sweep --resume {job.folder}" + (" --storage URL" if args.storage else "")
    if not done:
        print(f"trainyard: sweep interrupted; resume with: {resume} (or the same command)", file=sys.stderr)
        return 130
    trials = job.trials
    left = [t["name"] for t in trials if t["status"] in ("pending", "running", "interrupted")]
    if left:
        print(
            f"{len(left)} trial{'s' if len(left) > 1 else ''} not done here (running elsewhere, or retried too often): {', '.join(left)}",
            file=sys.stderr,
        )
    failed = [t["name"] for t in trials if t["status"] == "failed"]
    if failed:
        print(f"{len(failed)} trial{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}", file=sys.stderr)
    print(f"compare them in TensorBoard's HParams tab: trainyard board {job.folder}")
    return 1 if failed and len(failed) == len(trials) else 0
