"""``trainyard doctor``: pre-flight checks on the real config, data and model.

Each check is one small function ``check(ctx) -> Finding`` over a shared :class:`~trainyard.doctor.context.Context`
(the data, the model, the loader, a strategy, all built once through the same code the run uses). It prints
one line: PASS, WARN or FAIL, what it saw, and the fix. A check that crashes is reported as a FAIL of that
check, never a traceback. ``trainyard train --doctor`` runs the same checks and stops on a FAIL.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, TextIO

from trainyard.config import RunConfig, suggest
from trainyard.errors import ConfigError, TrainyardError

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass
class Finding:
    """What one check saw. ``fix`` says what to do about a WARN or FAIL."""

    status: str
    saw: str
    fix: str = ""
    name: str = ""
    seconds: float = 0.0
    measured: dict = field(default_factory=dict)  # the numbers behind the verdict, for tests and benchmarks


def ok(saw: str) -> Finding:
    return Finding(PASS, saw)


def warn(saw: str, fix: str) -> Finding:
    return Finding(WARN, saw, fix)


def fail(saw: str, fix: str) -> Finding:
    return Finding(FAIL, saw, fix)


def worst(findings: Iterable[Finding]) -> str:
    statuses = {f.status for f in findings}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS


def merge(findings: list[Finding]) -> Finding:
    """Several observations of one check as one line: the worst status, the sightings and fixes joined."""
    status = worst(findings)
    shown = [f for f in findings if f.status == status] + [f for f in findings if f.status != status]
    measured = {k: v for f in findings for k, v in f.measured.items()}
    return Finding(status, "; ".join(f.saw for f in shown if f.saw), "; ".join(f.fix for f in shown if f.fix), measured=measured)


# name -> "module:function", in the order they run and print.
CHECKS: dict[str, str] = {
    "labels": "trainyard.doctor.data_checks:labels",
    "forward": "trainyard.doctor.model_checks:forward",
    "inputs": "trainyard.doctor.data_checks:inputs",
    "overfit": "trainyard.doctor.model_checks:overfit",
    "gradients": "trainyard.doctor.model_checks:gradients",
    "modes": "trainyard.doctor.model_checks:modes",
    "loader": "trainyard.doctor.data_checks:loader",
    "sampler": "trainyard.doctor.data_checks:sampler",
    "batches": "trainyard.doctor.data_checks:batches",
    "duplicates": "trainyard.doctor.data_checks:duplicates",
    "run_folder": "trainyard.doctor.run_checks:run_folder",
    "lr": "trainyard.doctor.model_checks:lr_range",
}


def select(only: Iterable[str] | None = None, skip: Iterable[str] | None = None) -> list[str]:
    """The check names to run, in registry order; an unknown name is a ConfigError."""
    only, skip = list(only or []), list(skip or [])
    for name in only + skip:
        if name not in CHECKS:
            raise ConfigError(f"doctor check {name!r}: unknown; allowed: {', '.join(CHECKS)}{suggest(name, CHECKS)}")
    return [n for n in CHECKS if (not only or n in only) and n not in skip]


def run_check(name: str, ctx) -> Finding:
    """One check; a crash becomes a FAIL of that check."""
    from trainyard.doctor.context import NotBuilt

    start = time.perf_counter()
    try:
        module, func = CHECKS[name].split(":")
        finding = getattr(importlib.import_module(module), func)(ctx)
    except NotBuilt as exc:
        finding = fail(f"not run: {exc}", exc.fix)
    except TrainyardError as exc:
        if ctx.is_setup_error(exc):
            raise  # the config cannot even build the data or model: one line, exit 2, like `trainyard train`
        finding = fail(str(exc), "fix the config value named above")
    except Exception as exc:  # noqa: BLE001 - a crashing check is a finding, not a traceback
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        finding = fail(f"the check crashed: {type(exc).__name__}: {text[:300]}", "the message above comes from your data or model code")
    finding.name = name
    finding.seconds = time.perf_counter() - start
    return finding


def render(finding: Finding) -> str:
    line = f"{finding.status}  {finding.name:<10}  {finding.saw}"
    if finding.fix and finding.status != PASS:
        line += f"  -> {finding.fix}"
    return line


def run_checks(cfg: RunConfig, names: list[str] | None = None, out: TextIO | None = None) -> list[Finding]:
    """Run the named checks (all by default) on ``cfg``, printing each line as it completes; return the findings."""
    from trainyard.doctor.context import Context

    out = sys.stdout if out is None else out
    names = list(CHECKS) if names is None else names
    ctx = Context(cfg)
    start = time.perf_counter()
    print(f"trainyard doctor: {ctx.summary()}", file=out, flush=True)
    findings = []
    try:
        for name in names:
            finding = run_check(name, ctx)
            findings.append(finding)
            print(render(finding), file=out, flush=True)
    finally:
        ctx.close()
    counts = {s: sum(f.status == s for f in findings) for s in (PASS, WARN, FAIL)}
    print(
        f"doctor: {counts[PASS]} PASS, {counts[WARN]} WARN, {counts[FAIL]} FAIL in {time.perf_counter() - start:.1f} s",
        file=out,
        flush=True,
    )
    return findings


def run_doctor(cfg: RunConfig, only: Iterable[str] | None = None, skip: Iterable[str] | None = None) -> bool:
    """All checks (or a selection) on ``cfg``; True when none FAILs. Used by ``trainyard train --doctor``."""
    findings = run_checks(cfg, select(only, skip))
    return all(f.status != FAIL for f in findings)


__all__ = ["CHECKS", "Finding", "PASS", "WARN", "FAIL", "ok", "warn", "fail", "merge", "run_check", "run_checks", "run_doctor", "select"]
