"""Choosing ``num_workers``."""

from __future__ import annotations

import os


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_num_workers() -> int:
    """``loader.num_workers: auto`` without a measurement: leave one core for the training process."""
    return max(0, min(4, cpu_count() - 1))
