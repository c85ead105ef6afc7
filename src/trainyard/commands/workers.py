"""``trainyard tune-workers [RUN.yaml] [overrides] [--max-seconds 60] [--write]``."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import yaml

from trainyard.commands import resolve, split_config_args
from trainyard.config import load_config, read_yaml
from trainyard.errors import ConfigError


def tune_workers(args: argparse.Namespace) -> int:
    from trainyard.data.workers import DATA_BOUND, store_num_workers
    from trainyard.tools.workers import Measurement, measure_workers

    path, _ = split_config_args(args.overrides)
    if args.write and path is None:
        raise ConfigError("--write: needs a RUN.yaml to write loader.num_workers into (trainyard tune-workers RUN.yaml --write)")
    if args.max_seconds <= 0:
        raise ConfigError(f"--max-seconds={args.max_seconds}: must be > 0")
    cfg = resolve(args)

    print(
        f"measuring num_workers for data.dataset={cfg.data.dataset}, batch {cfg.loader.batch_size}, model {cfg.model.name} (about "
        f"{args.max_seconds:.0f} s)",
        flush=True,
    )
    print(f"{'num_workers':>11}  {'loader batches/s':>16}  {'train steps/s':>13}  {'data wait':>9}  {'first batch':>11}", flush=True)

    def row(m: Measurement) -> None:
        print(
            f"{m.num_workers:>11}  {m.batches_per_s:>16.1f}  {m.steps_per_s:>13.1f}  {m.data_wait:>9.0%}  {m.startup_s:>10.2f}s", flush=True
        )

    tuning = measure_workers(cfg, args.max_seconds, report=row)
    best = tuning.best
    print(
        f"model step alone: {tuning.compute_s * 1000:.1f} ms on {tuning.device} ({1 / tuning.compute_s:.1f} steps/s); {tuning.cpus} CPU(s)"
    )
    if tuning.stopped_early:
        print("stopped: training throughput fell with more workers")
    for note in tuning.notes:
        print(note)
    loader_ms = 1000 / best.batches_per_s
    if tuning.data_bound:
        print(
            f"data-bound: yes, {best.data_wait:.0%} of training time waits for data at num_workers={best.num_workers} "
            f"(a batch takes {loader_ms:.1f} ms to load, {tuning.compute_s * 1000:.1f} ms to train on); "
            "more workers did not help: lighten data.train_transforms or cache decoded samples"
        )
    else:
        print(
            f"data-bound: no, {best.data_wait:.0%} of training time waits for data at num_workers={best.num_workers} (threshold "
            f"{DATA_BOUND:.0%})"
        )
    stored = store_num_workers(cfg, best.num_workers)
    if stored is not None:
        print(f"stored for loader.num_workers=auto: {stored}")
    if args.write:
        write_num_workers(Path(path), best.num_workers)
        print(f"wrote loader.num_workers: {best.num_workers} into {path}")
    print(f"RESULT recommended_num_workers {best.num_workers}")
    print(f"RESULT data_bound {str(tuning.data_bound).lower()}")
    return 0


_TOP_LOADER = re.compile(r"^loader\s*:(?P<rest>.*)$")
_KEY = re.compile(r"^(?P<indent>\s+)num_workers\s*:(?P<value>[^#\n]*?)(?P<comment>\s+#.*)?$")


def write_num_workers(path: Path, value: int) -> None:
    """Set ``loader.num_workers`` in a YAML file, keeping every other line (comments included) as it was."""
    section = read_yaml(path).get("loader")  # a clear error for a missing or broken file
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"--write: loader in {path} is not a mapping of keys; set loader.num_workers: {value} by hand")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if text.endswith("\r\n") else "\n"
    start = next((i for i, line in enumerate(lines) if _TOP_LOADER.match(line.rstrip("\r\n"))), None)
    if start is None:
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += newline
        lines += [f"loader:{newline}", f"  num_workers: {value}{newline}"]
    else:
        rest = _TOP_LOADER.match(lines[start].rstrip("\r\n")).group("rest").split("#")[0].strip()
        if rest:  # a flow mapping, `loader: {batch_size: 32}`: rewrite that one line
            section = dict(section or {}, num_workers=value)
            lines[start] = "loader: " + yaml.safe_dump(section, default_flow_style=True, sort_keys=False).strip() + newline
        else:
            end, indent = start + 1, None
            while end < len(lines):
                stripped = lines[end].strip()
                if stripped and not stripped.startswith("#"):
                    if not lines[end][0].isspace():
                        break
                    indent = indent or lines[end][: len(lines[end]) - len(lines[end].lstrip())]
                end += 1
            for i in range(start + 1, end):
                m = _KEY.match(lines[i].rstrip("\r\n"))
                if m and m.group("indent") == indent:
                    lines[i] = f"{m.group('indent')}num_workers: {value}{m.group('comment') or ''}{newline}"
                    break
            else:
                lines.insert(start + 1, f"{indent or '  '}num_workers: {value}{newline}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    try:
        written = read_yaml(tmp)
        if not isinstance(written.get("loader"), dict) or written["loader"].get("num_workers") != value:
            raise ConfigError(f"--write: could not place loader.num_workers in {path} safely; set loader.num_workers: {value} by hand")
        load_config(tmp)  # the file still validates
    except ConfigError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
