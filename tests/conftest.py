"""Shared fixtures. Subprocesses started by tests import trainyard from this checkout's src/."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# ../shared/data from the project root; from a worktree nested deeper, the nearest ancestor's shared/data.
SHARED_DATA = next(
    (p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data"
).resolve()

os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def free_port() -> int:
    """A port below Linux's ephemeral range (32768+), in a block of its own for each pytest-xdist worker: between
    this check and the rank that binds it, no outgoing connection of another test can be given the same port."""
    import random

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = 20000 + 1500 * (index % 8)
    for _ in range(200):
        candidate = random.randint(low, low + 1499)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    """A free TCP port on 127.0.0.1 for one multi-process test."""
    return free_port()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data: real MNIST, CIFAR-10 PNGs and the SMS Spam Collection (read-only)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def tiny(tmp_path: Path) -> list[str]:
    """Overrides for a fast run on digits in a temporary runs folder."""
    return [
        f"track.root={tmp_path / 'runs'}",
        "trainer.epochs=2",
        "trainer.log_every=5",
        "model.width=8",
        "trainer.progress=false",
    ]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """``python -m trainyard ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "trainyard", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def interrupt_run(args: list[str], run_dir: Path, *, env: dict | None = None, lines: int = 8, wait: float = 150):
    """``python -m trainyard train ARGS`` in its own process group; once ``run_dir/metrics.jsonl`` has ``lines``
    lines, Ctrl-C the whole group (every rank or stage gets it, each at its own step). Asserts the run stopped
    as an interrupted run should: exit 130, the resume command printed, status ``interrupted``. Returns stderr."""
    import json
    import signal
    import subprocess
    import time

    command = [sys.executable, "-m", "trainyard", "train", *args]
    job = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + wait
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= lines):
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130, err[-3000:]
    assert "resume with: trainyard train --resume" in err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    return err


# The longest files first (each is one pytest-xdist work unit under --dist loadfile): started last, one of them
# would leave the other workers idle while it finishes.
LONGEST_FIRST = (
    "unit/parallel/test_fsdp.py",
    "unit/parallel/test_ddp.py",
    "integration/test_run_faults.py",
    "integration/test_sweep.py",
    "integration/test_run_folder.py",
    "integration/test_user_code.py",
    "unit/parallel/test_pipeline.py",
    "integration/test_sweep_postgres.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the tests of a file keep their order
