"""``trainyard doctor [RUN.yaml] [overrides] [--only a,b] [--skip c]``: exit 1 on any FAIL."""

from __future__ import annotations

import argparse

from trainyard.commands import resolve
from trainyard.doctor import run_doctor


def _names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def main(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    only, skip = _names(getattr(args, "only", None)), _names(getattr(args, "skip", None))
    return 0 if run_doctor(cfg, only, skip) else 1
