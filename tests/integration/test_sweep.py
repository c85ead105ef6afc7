"""Sweeps on Optuna, with real processes on the bundled digits: two workers share one embedded study and run
every trial once; a worker killed mid-trial is replaced and its trial resumes from last.pt, ending as the
study that was never interrupted; pruning stops trials that fall behind; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, run_cli

FAST = [
    "trainer.log_every=5",
    "model.width=8",
    "trainer.progress=false",
    "data.train_transforms=[]",
    "track.images=false",
    "track.graph=false",
    "trainer.histogram_every=0",
    "data.max_samples=600",
]


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The last table printed, as dicts (cells split on runs of spaces: the sweep's cells hold none)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("----"))
    headers = lines[start - 1].split()
    rows = []
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) < 4 or not cells[0].startswith("trial-"):
            break
        cells = cells[:2] + [" ".join(cells[2:4])] + cells[4:]  # "started" is a date and a time
        rows.append(dict(zip(headers, cells)))
    return rows


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def study_trials(folder: Path):
    from trainyard.runs.sweep import Sweep

    return Sweep.load(folder).study.get_trials(deepcopy=False)


def epochs_logged(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in rows if "val/accuracy" in r]


def sweep_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "trainyard", "sweep", f"track.root={root}", *FAST, *args]


@pytest.mark.timeout(300)
def test_two_workers_share_one_study_and_run_every_trial_once(tmp_path):
    root = tmp_path / "runs"
    res = subprocess.run(
        sweep_cmd(root, "trainer.epochs=2", "optim.lr=0.01,0.003", "model.width=4,8", "--name", "s", "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    folder = root / "s"
    names = [f"trial-{i:03d}" for i in range(4)]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(["optuna.journal", "sweep.json", *names])
    assert "[worker 0] ==" in res.stdout and "[worker 1] ==" in res.stdout  # both took trials
    for name in names:
        assert res.stdout.count(f"== {name} ") == 1  # claimed once
        assert status(folder / name)["status"] == "finished" and epochs_logged(folder / name) == [0, 1]  # trained once, never overwritten
    trials = study_trials(folder)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # no retry, no extra trial
    assert sorted(t.user_attrs["run"] for t in trials) == names
    rows = table_rows(res.stdout)
    assert sorted(r["name"] for r in rows) == names
    values = [float(r["best/val/accuracy"]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first

    # the same command again joins the finished study: nothing is trained twice
    again = subprocess.run(
        sweep_cmd(root, "trainer.epochs=2", "optim.lr=0.01,0.003", "model.width=4,8", "--name", "s"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "4 trials, 0 to run" in again.stdout and "== trial-" not in again.stdout
    assert len(table_rows(again.stdout)) == 4


def _best_values(folder: Path) -> dict[str, float]:
    return {p.name: status(p)["best"] for p in sorted(folder.glob("trial-*"))}


@pytest.mark.timeout(420)
def test_a_killed_worker_is_replaced_and_its_trial_resumes_to_the_same_result(tmp_path):
    args = ["trainer.epochs=4", "optim.lr=0.01,0.003", "--name", "k", "--workers", "2"]
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    job = subprocess.Popen(sweep_cmd(killed_root, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trial = killed_root / "k" / "trial-001"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:  # SIGKILL trial-001's worker once it has its first checkpoint
        if (trial / "checkpoints" / "last.pt").exists() and (trial / "status.json").exists():
            break
        time.sleep(0.05)
    first = status(trial)
    assert first["status"] == "running", "trial-001 ended before it could be killed"
    os.kill(first["environment"]["pid"], signal.SIGKILL)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert "died (signal SIGKILL)" in out
    assert "== trial-001 (2/2) resumed" in out  # from last.pt, in the same folder
    assert status(trial)["status"] == "finished" and epochs_logged(trial) == [0, 1, 2, 3]
    assert sorted(p.name for p in (killed_root / "k").glob("trial-*")) == ["trial-000", "trial-001"]  # nothing renamed or added
    states = sorted(t.state.name for t in study_trials(killed_root / "k"))
    assert states == ["COMPLETE"] * 2 + ["FAIL"]  # the killed attempt, retried once

    clean = subprocess.run(sweep_cmd(clean_root, *args), capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert _best_values(killed_root / "k") == _best_values(clean_root / "k")  # same seeds, same threads: the same study
    killed_rows = [(r["name"], r["best/val/accuracy"], r["test/accuracy"]) for r in table_rows(out)]
    assert killed_rows == [(r["name"], r["best/val/accuracy"], r["test/accuracy"]) for r in table_rows(clean.stdout)]


@pytest.mark.timeout(300)
def test_prune_median_stops_trials_that_fall_behind(tmp_path):
    root = tmp_path / "runs"
    lrs = "0.01,0.008,0.006,0.005,0.00001,0.000005"  # the last two cannot keep up
    res = run_cli(
        "sweep", f"track.root={root}", *FAST, "trainer.epochs=3", f"optim.lr={lrs}", "--name", "p", "--prune", "median", timeout=280
    )
    assert res.returncode == 0, res.stderr[-3000:]
    folder = root / "p"
    pruned = [p.name for p in sorted(folder.glob("trial-*")) if status(p)["status"] == "pruned"]
    assert pruned and set(pruned) <= {"trial-004", "trial-005"}
    for name in pruned:
        assert len(epochs_logged(folder / name)) < 3  # stopped early
    rows = table_rows(res.stdout)
    assert [r["status"] for r in rows][-len(pruned) :] == ["pruned"] * len(pruned)  # ranked last
    listing = run_cli("runs", str(folder))
    assert listing.returncode == 0 and listing.stdout.count("pruned") == len(pruned)
    states = {t.user_attrs["run"]: t.state.name for t in study_trials(folder)}
    assert [states[n] for n in pruned] == ["PRUNED"] * len(pruned)


@pytest.mark.timeout(300)
def test_tpe_runs_the_number_of_trials_asked(tmp_path):
    root = tmp_path / "runs"
    res = run_cli(
        "sweep",
        f"track.root={root}",
        *FAST,
        "trainer.epochs=1",
        "optim.lr=loguniform(1e-3,3e-2)",
        "model.width=4,8",
        "--search",
        "tpe",
        "--trials",
        "3",
        "--name",
        "t",
        timeout=280,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = study_trials(root / "t")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert all(1e-3 <= t.params["optim.lr"] <= 3e-2 and t.params["model.width"] in ("4", "8") for t in trials)
    assert len(table_rows(res.stdout)) == 3


# --- bad input: one line, exit 2, no traceback ----------------------------------------------------


def one_line_error(res) -> str:
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    (line,) = [line for line in res.stderr.strip().splitlines() if line.startswith("trainyard")]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return line


def test_a_storage_that_cannot_be_reached_or_parsed_is_one_line_without_the_password(tmp_path):
    port = free_port()
    url = f"postgresql://me:hunter2@127.0.0.1:{port}/sweeps"
    line = one_line_error(run_cli("sweep", f"track.root={tmp_path}", "optim.lr=0.1,0.01", "--storage", url, timeout=60))
    assert "hunter2" not in line and f"me:***@127.0.0.1:{port}" in line and f"tried postgresql at 127.0.0.1:{port}" in line
    line = one_line_error(
        run_cli("sweep", f"track.root={tmp_path}", "optim.lr=0.1,0.01", "--storage", "postgres//me:hunter2@x", timeout=60)
    )
    assert "hunter2" not in line and "not a database URL" in line
    assert not any(tmp_path.iterdir())  # nothing made


def test_joining_a_study_with_another_search_space_names_the_keys(tmp_path):
    from trainyard.runs.sweep import Sweep

    Sweep.create(None, [f"track.root={tmp_path}", "optim.lr=0.1,0.01", "model.width=4,8"], None, 0, "s")
    line = one_line_error(
        run_cli("sweep", f"track.root={tmp_path}", "optim.lr=0.1,0.02", "model.width=4,8", "loader.batch_size=16,32", "--name", "s")
    )
    assert "another search space" in line and "loader.batch_size, optim.lr" in line and "model.width" not in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--workers", "999"], "--workers 999: this machine has"),
        (["data.val_fraction=0", "--prune", "median"], "--prune median: needs a validation split"),
        (["optim.lr=loguniform(1e-4)"], "optim.lr=loguniform(1e-4): does not parse"),
        (["optim.lr=lognormal(1e-4,1)"], "not a range this sweep knows"),
        (["optim.lr=uniform(0.1,0.01)"], "need LOW < HIGH"),
        (["--search", "tpe"], "--search tpe: needs --trials N"),
    ],
)
def test_bad_sweep_arguments_are_one_line(tmp_path, args, expected):
    line = one_line_error(run_cli("sweep", f"track.root={tmp_path}", "model.width=4,8", *args, timeout=60))
    assert expected in line


CLAIM_AND_DIE = """
import os, sys
from pathlib import Path
from trainyard.runs.study import claim, load_study
folder = Path(sys.argv[1])
study, spec = load_study(folder, None, "d")
trial, lock = claim(study, folder)
trial.set_user_attr("run", "trial-000")
(folder / "trial-000").mkdir()
(folder / "trial-000" / "config.yaml").write_text("name: trial-000\\n")  # died before its first checkpoint
os._exit(9)
"""


@pytest.mark.timeout(240)
def test_a_trial_that_died_before_its_first_checkpoint_starts_again_in_a_new_folder(tmp_path):
    from trainyard.runs.sweep import Sweep

    root = tmp_path / "runs"
    sweep = Sweep.create(None, [f"track.root={root}", *FAST, "trainer.epochs=1", "optim.lr=0.01,0.003"], None, 0, "d")
    died = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, str(sweep.folder)], capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    assert [t["status"] for t in sweep.trials] == ["running", "pending"]
    lines: list[str] = []
    assert sweep.run(log=lines.append)
    assert any("trial-000: its process died" in line for line in lines)
    assert (sweep.folder / "trial-000" / "config.yaml").read_text() == "name: trial-000\n"  # kept as it was
    assert [(t["name"], t["status"]) for t in sweep.trials] == [("trial-000-2", "finished"), ("trial-001", "finished")]
    _, rows, _ = sweep.summary()
    assert sorted(r[0] for r in rows) == ["trial-000-2", "trial-001"]


@pytest.mark.timeout(200)
def test_a_stop_outside_the_run_itself_queues_the_trial_again(tmp_path, monkeypatch):
    """Ctrl-C while a claimed trial's config loads, before train() takes the signals over: the trial is queued
    again, not left running with its claim gone (where no later command would look for it)."""
    import trainyard.config
    from trainyard.runs.sweep import Sweep

    root = tmp_path / "runs"
    sweep = Sweep.create(None, [f"track.root={root}", *FAST, "trainer.epochs=1", "optim.lr=0.01,0.003"], None, 0, "q")
    real = trainyard.config.load_config

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainyard.config, "load_config", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(log=lambda line: None)
    monkeypatch.setattr(trainyard.config, "load_config", real)
    assert [t["status"] for t in sweep.trials] == ["interrupted", "pending"]
    assert sweep.run(log=lambda line: None)
    assert [(t["name"], t["status"]) for t in sweep.trials] == [("trial-000", "finished"), ("trial-001", "finished")]


@pytest.mark.timeout(300)
def test_ctrl_c_stops_every_worker_and_the_same_command_continues(tmp_path):
    from trainyard.runs.sweep import Sweep

    root = tmp_path / "runs"
    cmd = sweep_cmd(root, "trainer.epochs=3", "optim.lr=0.01,0.003,0.001", "--name", "c", "--workers", "2")
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and job.poll() is None and not (root / "c" / "trial-001" / "checkpoints" / "last.pt").exists():
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)  # the sweep's main process only: it passes the stop on to each worker
    out, err = job.communicate(timeout=150)
    assert job.returncode == 130, err[-3000:]
    assert "resume with: trainyard sweep --resume" in err
    trials = Sweep.load(root / "c").trials
    assert "interrupted" in {t["status"] for t in trials}, (trials, out[-3000:], err[-3000:])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stdout
    assert [t["status"] for t in Sweep.load(root / "c").trials] == ["finished"] * 3
    assert sorted(p.name for p in (root / "c").glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
