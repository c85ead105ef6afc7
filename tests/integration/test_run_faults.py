"""Faults a user can cause, each ending in one line with the run's record true (issue 16, cases 2, 4 and 7):
a resume whose overrides do not fit the checkpoint, a file-size limit hit while saving, and SIGINT/SIGTERM in
every phase of a run (set-up, validation, saving, the final test). Real processes, real signals, a real limit."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SRC

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
QUIET = ["track.images=false", "track.graph=false", "trainer.histogram_every=0"]


def cli(*args: str, timeout: float = 240, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainyard", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
        cwd=HERE,
        preexec_fn=preexec,
    )


def finished(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("trainyard: warning:")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def snapshot(run_dir: Path) -> dict[Path, bytes]:
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Finished runs trained once for the module, as ``tiny`` trains them: ``done`` (2 epochs) and ``one``
    (1 epoch). A test works on its own copy (``copy_of``), so none sees another's changes."""
    root = tmp_path_factory.mktemp("trained") / "runs"
    tiny = [f"track.root={root}", "trainer.epochs=2", "trainer.log_every=5", "model.width=8", "trainer.progress=false"]
    finished(cli("train", *tiny, *QUIET, "name=done"))
    finished(cli("train", *tiny, *QUIET, "name=one", "trainer.epochs=1"))
    return {"done": root / "done", "one": root / "one"}


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run folder under ``tmp_path/runs``; a resume continues the folder it is given."""
    return Path(shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name))


# --- case 2: a resume that does not fit ---------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_a_resume_whose_overrides_do_not_fit_is_refused_before_anything_is_written(tmp_path, trained):
    run_dir = copy_of(trained["done"], tmp_path)
    before = snapshot(run_dir)

    line = one_line(
        cli("train", "--resume", str(run_dir), "model.width=64", "optim.lr=0.1", "trainer.epochs=3"),
        2,
        "model.width=64 (trained with 8)",
        "optim.lr=0.1 (trained with 0.003)",
        "trainer.epochs",
    )
    assert "trainer.epochs=3" not in line  # an allowed change is not named as a refused one
    one_line(cli("train", "--resume", str(run_dir), "model.name=mlp"), 2, "model.name=mlp (trained with cnn)")
    assert snapshot(run_dir) == before  # config.yaml holds the trained values still

    # an allowed override continues the run as before
    finished(cli("train", "--resume", str(run_dir), "trainer.epochs=3"))
    assert status(run_dir)["status"] == "finished"
    assert "epochs: 3" in (run_dir / "config.yaml").read_text()


@pytest.mark.timeout(300)
def test_a_checkpoint_that_does_not_fit_the_model_is_one_line_and_changes_nothing(tmp_path, trained):
    """config.yaml edited by hand to another width: the config check passes, loading the weights cannot."""
    run_dir = copy_of(trained["done"], tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("width: 8", "width: 12"))
    before = snapshot(run_dir)
    one_line(cli("train", "--resume", str(run_dir)), 2, "last.pt", "does not fit this model", "size mismatch")
    assert snapshot(run_dir) == before


# --- case 4: no room to save ------------------------------------------------------------------------------


def file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a write past `limit` bytes fails with EFBIG

    return apply


@pytest.mark.timeout(400)
def test_a_save_that_hits_a_file_size_limit_is_one_line_keeps_last_pt_and_says_failed(tmp_path, tiny):
    run_dir = tmp_path / "runs" / "full"
    finished(cli("train", *tiny, *QUIET, "name=full", "trainer.epochs=1", "model.width=32"))
    last = run_dir / "checkpoints" / "last.pt"
    kept = last.read_bytes()
    limit = len(kept) // 2  # the checkpoint cannot be written again; the small files can
    assert limit > 20_000

    proc = cli("train", "--resume", str(run_dir), "trainer.epochs=2", preexec=file_size_limit(limit))
    line = one_line(proc, 1, "cannot write", "last.pt", "File too large", "free there")
    assert last.read_bytes() == kept  # the previous last.pt, whole
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no partial file
    assert not list(run_dir.glob("*.tmp*")) and not list(run_dir.glob(".*.tmp*"))
    record = status(run_dir)
    assert record["status"] == "failed" and record["reason"] == line.removeprefix("trainyard: error: ")
    assert not (run_dir / ".lock").exists()

    finished(cli("train", "--resume", str(run_dir), "trainer.epochs=2"))  # room again: it continues from the kept last.pt
    assert status(run_dir)["status"] == "finished" and status(run_dir)["reason"] is None


@pytest.mark.timeout(300)
def test_a_new_run_that_cannot_write_its_first_file_leaves_no_folder(tmp_path, tiny):
    root = tmp_path / "runs"
    root.mkdir()
    os.chmod(root, 0o555)
    try:
        proc = cli("train", *tiny, "name=ro")
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        one_line(proc, 2, "cannot create run folder")
    finally:
        os.chmod(root, 0o755)
    assert not (root / "ro").exists()


# --- case 7: a signal in every phase ------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGTERM])  # SIGINT takes the same handler: the final test's case below
def test_a_signal_during_set_up_of_a_new_run_removes_the_folder_it_made(tmp_path, tiny, signum):
    proc = cli("train", *tiny, "name=early", f"callbacks=[{{usercode:SignalOnBuild: {{signum: {int(signum)}}}}}]")
    one_line(proc, 128 + signum, signal.Signals(signum).name, "during set-up", "nothing was trained", "removed")
    assert not (tmp_path / "runs" / "early").exists()


@pytest.mark.timeout(300)
def test_a_signal_during_set_up_of_a_resume_leaves_the_run_as_it_was(tmp_path, trained):
    run_dir = copy_of(trained["done"], tmp_path)
    before = snapshot(run_dir)
    proc = cli("train", "--resume", str(run_dir), "trainer.epochs=3", "callbacks=[usercode:SignalOnBuild]")
    one_line(proc, 128 + signal.SIGTERM, "during set-up", "is as it was", f"resume with: trainyard train --resume {run_dir}")
    assert snapshot(run_dir) == before


def signal_in_eval(eval_pass: int, signum: int) -> list[str]:
    return ["model.name=usercode:SignalInEval", f"model.args={{eval_pass: {eval_pass}, signum: {int(signum)}}}"]


@pytest.mark.timeout(500)
def test_a_signal_during_validation_stops_after_it_with_last_pt_and_the_resume_equals_an_uninterrupted_run(tmp_path, tiny):
    args = [*tiny, *QUIET, *signal_in_eval(1, signal.SIGTERM), "trainer.epochs=2"]
    run_dir = tmp_path / "runs" / "val"
    proc = cli("train", *args, "name=val")
    one_line(proc, 128 + signal.SIGTERM, "SIGTERM", "saved", f"resume with: trainyard train --resume {run_dir}")
    assert status(run_dir)["status"] == "interrupted"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # stopped at the epoch's end

    calm = {"SIGNAL_IN_EVAL": "0"}
    finished(cli("train", "--resume", str(run_dir), env=calm))
    finished(cli("train", *args, "name=whole", env=calm))
    resumed, whole = weights(run_dir / "checkpoints" / "last.pt"), weights(tmp_path / "runs" / "whole" / "checkpoints" / "last.pt")
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name


@pytest.mark.timeout(400)
@pytest.mark.parametrize("signum", [signal.SIGINT])  # SIGTERM: the set-up case above
def test_a_signal_during_the_final_test_says_how_to_run_the_test_and_the_resume_runs_it(tmp_path, tiny, signum):
    run_dir = tmp_path / "runs" / "test"
    proc = cli("train", *tiny, *QUIET, *signal_in_eval(2, signum), "trainer.epochs=1", "name=test")
    one_line(proc, 128 + signum, "the test was stopped", f"run it with: trainyard train --resume {run_dir}")
    record = status(run_dir)
    assert record["status"] == "interrupted" and "the test was stopped" in record["reason"]

    out = finished(cli("train", "--resume", str(run_dir), env={"SIGNAL_IN_EVAL": "0"})).stdout
    assert "test accuracy" in out
    record = status(run_dir)
    assert record["status"] == "finished" and "test/accuracy" in record["final"]


@pytest.mark.timeout(400)
def test_a_signal_during_a_save_lets_the_save_finish_then_stops(tmp_path, tiny):
    run_dir = tmp_path / "runs" / "save"
    proc = cli("train", *tiny, *QUIET, "name=save", "trainer.epochs=3", "callbacks=[usercode:SignalOnSave]")
    one_line(proc, 128 + signal.SIGTERM, "saved", "resume with")
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the save under way when the signal came, whole
    assert status(run_dir)["status"] == "interrupted"
    finished(cli("train", "--resume", str(run_dir), "callbacks=[]"))
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3


# --- beyond the list -------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_resume_after_a_torn_metrics_row_appends_whole_lines(tmp_path, trained):
    """A run killed in the middle of writing metrics.jsonl leaves half a row; the resume's rows start on a line
    of their own, so every line of the file is one JSON object."""
    run_dir = copy_of(trained["one"], tmp_path)
    metrics = run_dir / "metrics.jsonl"
    whole = metrics.read_text()
    with open(metrics, "a") as f:
        f.write('{"step": 99, "epoch": 1, "train/lo')  # what a SIGKILL mid-write leaves
    finished(cli("train", "--resume", str(run_dir), "trainer.epochs=2"))
    text = metrics.read_text()
    assert text.startswith(whole) and text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(row, dict) for row in rows) and max(row["epoch"] for row in rows) >= 1
    table = cli("runs", str(tmp_path / "runs"))
    assert table.returncode == 0 and "unreadable" not in table.stdout, table.stdout + table.stderr


@pytest.mark.timeout(400)
def test_a_longer_resume_stretches_a_cosine_to_the_new_end_and_refuses_to_stretch_a_one_cycle(tmp_path, tiny, trained):
    run_dir = copy_of(trained["one"], tmp_path)  # the default schedule: cosine
    finished(cli("train", "--resume", str(run_dir), "trainer.epochs=3"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["scheduler"]["T_max"] == state["step"]  # laid out to the new last step
    assert state["optimizer"]["param_groups"][0]["lr"] < 1e-9  # and decayed to schedule.min_lr there, not back up

    one_cycle = tmp_path / "runs" / "onecycle"
    finished(cli("train", *tiny, *QUIET, "name=onecycle", "trainer.epochs=1", "schedule.name=onecycle"))
    before = snapshot(one_cycle)
    one_line(cli("train", "--resume", str(one_cycle), "trainer.epochs=3"), 2, "schedule.name=onecycle", "cannot be lengthened")
    assert snapshot(one_cycle) == before
