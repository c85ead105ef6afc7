"""A run folder has one writer, and a command that changed nothing leaves its record as it was (issue 16, cases 1
and 5). Real processes, real signals: a live run in a subprocess, a second command against its folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli


def start_live(tiny: list[str], *extra: str) -> subprocess.Popen:
    """``trainyard train name=live`` with epochs enough to still be training when the test is done with it."""
    args = [*tiny, "name=live", "trainer.epochs=500", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "trainyard", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_metrics(job: subprocess.Popen, run_dir: Path, wait: float = 120) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + wait
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 1 and (run_dir / "status.json").exists():
            return
        if job.poll() is not None:
            raise AssertionError(f"the live run ended early ({job.returncode}): {job.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError("the live run logged nothing in time")


def stop(job: subprocess.Popen, signum: int) -> None:
    if job.poll() is None:
        os.killpg(job.pid, signum)
    job.communicate(timeout=60)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.timeout(300)
def test_a_second_writer_is_refused_while_a_run_trains_and_admitted_once_it_was_killed(tmp_path, tiny):
    run_dir = tmp_path / "runs" / "live"
    live = start_live(tiny)
    try:
        wait_for_metrics(live, run_dir)
        config_before = (run_dir / "config.yaml").read_bytes()
        lock_before = (run_dir / ".lock").read_bytes()
        files_before = {p.relative_to(run_dir) for p in run_dir.rglob("*")}

        second = run_cli("train", "--resume", str(run_dir), "trainer.epochs=3", timeout=120)
        line = assert_one_line_error(second, f"pid {live.pid}", str(run_dir), "in use")
        assert "trainyard train" in line  # the holder's command

        # Nothing the second command could have written: config.yaml (it would hold epochs=3), the lock, status.
        assert (run_dir / "config.yaml").read_bytes() == config_before
        assert (run_dir / ".lock").read_bytes() == lock_before
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "running" and status["environment"]["pid"] == live.pid
        # metrics.jsonl: only the live run's points, each step once and in order (a second writer restarts at its checkpoint's step)
        steps = [json.loads(line)["step"] for line in lines_of(run_dir / "metrics.jsonl")]
        assert steps == sorted(steps)
        # No new file but the live run's own checkpoints and media (not a second event file, a status tmp file)
        new = {p.relative_to(run_dir) for p in run_dir.rglob("*")} - files_before
        assert all(p.parts[0] in ("checkpoints", "media") or p.parts[0].startswith("epoch_") for p in new), (
            new
        )  # epoch_*: its grouped scalars
        assert live.poll() is None  # the live run was not disturbed
        while not (run_dir / "checkpoints" / "last.pt").exists():  # a checkpoint to resume from (one per epoch)
            assert live.poll() is None
            time.sleep(0.1)
    finally:
        stop(live, signal.SIGKILL)  # no cleanup of any kind: the kernel drops the lock with the process

    assert live.returncode == -signal.SIGKILL
    assert (run_dir / ".lock").exists()  # left behind, with the dead pid in it: it must not matter
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # the killed run could not say otherwise
    import torch

    epoch = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    resumed = run_cli("train", "--resume", str(run_dir), f"trainer.epochs={epoch + 1}", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert not (run_dir / ".lock").exists()  # released as the run ended


@pytest.mark.timeout(300)
def test_a_refused_resume_leaves_the_live_run_to_end_by_sigterm_as_usual(tmp_path, tiny):
    """SIGTERM ends the live run the way it should (last.pt, interrupted, resume hint); the lock goes with it."""
    run_dir = tmp_path / "runs" / "live"
    live = start_live(tiny)
    try:
        wait_for_metrics(live, run_dir)
        refused = run_cli("train", "--resume", str(run_dir), timeout=120)
        assert_one_line_error(refused, f"pid {live.pid}")
    finally:
        stop(live, signal.SIGTERM)
    assert live.returncode == 128 + signal.SIGTERM
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert not (run_dir / ".lock").exists()


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """One finished run; each test damages a copy of it."""
    root = tmp_path_factory.mktemp("done") / "runs"
    first = run_cli(
        "train", f"track.root={root}", "trainer.epochs=2", "trainer.log_every=5", "model.width=8", "trainer.progress=false", "name=done"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    return root / "done"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_a_resume_that_cannot_load_its_checkpoint_leaves_the_record_byte_identical(tmp_path, done_run, damage):
    run_dir = tmp_path / "runs" / "done"
    shutil.copytree(done_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if damage == "garbage":
        last.write_bytes(b"\x00not a checkpoint\xff" * 64)
    else:
        last.unlink()
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert json.loads(before[Path("status.json")])["status"] == "finished"

    proc = run_cli("train", "--resume", str(run_dir), "trainer.epochs=4", timeout=120)
    assert_one_line_error(proc, "last.pt")

    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()  # no lock file, event file or status tmp file left behind
    for name in before:
        assert after[name] == before[name], f"{name} changed"


@pytest.mark.timeout(300)
def test_under_ddp_the_primary_rank_holds_the_folder_and_a_second_ddp_run_is_refused(tmp_path, tiny):
    run_dir = tmp_path / "runs" / "live"
    ddp = ["parallel.strategy=ddp", "parallel.devices=2"]
    live = start_live(tiny, *ddp)
    try:
        wait_for_metrics(live, run_dir, wait=180)
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert live.poll() is None
            time.sleep(0.1)
        config_before = (run_dir / "config.yaml").read_bytes()
        holder = json.loads((run_dir / ".lock").read_text())["pid"]
        assert holder != live.pid  # rank 0, a process the CLI spawned
        second = run_cli("train", "--resume", str(run_dir), *ddp, "trainer.epochs=3", timeout=180)
        assert_one_line_error(second, f"pid {holder}", "in use")
        assert (run_dir / "config.yaml").read_bytes() == config_before
        assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
        assert live.poll() is None
    finally:
        stop(live, signal.SIGKILL)
