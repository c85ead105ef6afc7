"""Fault injection for tests/unit/parallel/test_ddp.py, plugged in as ``loader.collate=ddp_faults:collate``.

FAULT=raise|kill|hang picks what rank FAULT_RANK (default 1) does at its FAULT_AT-th batch, or (with
FAULT_WHEN set to a glob) at its first batch once a file matches the glob. With FAULT_ONCE set to a path,
the fault happens only while that file does not exist (it is created first): a restarted job runs clean.
"""

from __future__ import annotations

import glob
import os
import signal
import time

import torch.distributed as dist
from torch.utils.data import default_collate

_calls = 0


def collate(batch):
    global _calls
    _calls += 1
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == int(os.environ.get("FAULT_RANK", "1")) and _due():
        once = os.environ.get("FAULT_ONCE")
        if once:
            open(once, "x").close()
        fault = os.environ["FAULT"]
        if fault == "raise":
            raise RuntimeError(f"injected fault on rank {rank}")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            while True:
                time.sleep(1)
    return default_collate(batch)


def _due() -> bool:
    if "FAULT" not in os.environ:
        return False
    once = os.environ.get("FAULT_ONCE")
    if once and os.path.exists(once):
        return False
    when = os.environ.get("FAULT_WHEN")
    if when:
        return bool(glob.glob(when))
    return _calls == int(os.environ.get("FAULT_AT", "3"))
