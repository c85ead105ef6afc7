"""`trainyard tune-workers`: the candidates, the pick, writing the YAML, and `auto` reading the measurement."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from conftest import run_cli

from trainyard.commands.workers import write_num_workers
from trainyard.config import load_config
from trainyard.data.workers import resolve_auto, store_num_workers
from trainyard.errors import ConfigError
from trainyard.tools.workers import Measurement, Tuning, candidates, measure_workers, timed_pass


def test_candidates_double_up_to_the_cpu_count():
    assert candidates(1) == [0, 1]
    assert candidates(2) == [0, 1, 2]
    assert candidates(6) == [0, 1, 2, 4, 6]
    assert candidates(16) == [0, 1, 2, 4, 8, 16]


def tuning(*steps_per_s: float) -> Tuning:
    values = candidates(16)
    ms = [Measurement(n, 100.0 * (i + 1), s, 0.1, 0.1) for i, (n, s) in enumerate(zip(values, steps_per_s))]
    return Tuning(ms, compute_s=0.01, device=torch.device("cpu"), cpus=16)


def test_the_pick_is_the_measured_best_not_the_maximum():
    assert tuning(10, 18, 30, 41, 33).best.num_workers == 4  # 8 workers measured slower than 4
    assert tuning(10, 18, 40, 40.5).best.num_workers == 2  # within 5%: fewer workers win
    assert tuning(50, 20, 20).best.num_workers == 0  # workers only cost here


def test_timed_pass_warms_up_restarts_at_epoch_end_and_stops():
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.randn(12, 3), torch.arange(12)), batch_size=4)  # 3 batches an epoch
    seen: list[int] = []
    p = timed_pass(loader, 0.0, lambda x, y: seen.append(int(y[0])), torch.device("cpu"), min_batches=7)
    assert p.batches == 7 and seen == [0, 4, 8, 0, 4, 8, 0, 4]  # the warm-up batch, then 7 timed across epochs
    assert 0.0 <= p.wait_share <= 1.0 and p.per_s > 0
    assert timed_pass(loader, 60.0, None, torch.device("cpu"), max_batches=2).batches == 2
    empty = DataLoader(TensorDataset(torch.randn(3, 3), torch.arange(3)), batch_size=4, drop_last=True)
    assert timed_pass(empty, 1.0, None, torch.device("cpu")).batches == 0


@pytest.mark.timeout(120)
def test_measure_times_the_tasks_loss_on_a_regression_run():
    # float targets under a cross-entropy would fail at the first step: the step must use the task's loss
    cfg = load_config(None, ["data.dataset=diabetes", "task.name=regression", "model.name=mlp", "model.width=8", "trainer.device=cpu"])
    tuning = measure_workers(cfg, max_seconds=1.0)
    assert [m.num_workers for m in tuning.measurements][:2] == [0, 1]
    assert all(m.steps_per_s > 0 for m in tuning.measurements) and tuning.compute_s > 0


def test_write_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "# my run\nseed: 3\nloader:\n    batch_size: 32   # fits my GPU\n    num_workers: 0  # was a guess\noptim:\n    lr: 0.01\n"
    )
    write_num_workers(path, 4)
    assert (
        path.read_text()
        == "# my run\nseed: 3\nloader:\n    batch_size: 32   # fits my GPU\n    num_workers: 4  # was a guess\noptim:\n    lr: 0.01\n"
    )


@pytest.mark.parametrize(
    "before, after",
    [
        ("loader:\n  batch_size: 32\n# tail\n", "loader:\n  num_workers: 2\n  batch_size: 32\n# tail\n"),
        ("seed: 1\n", "seed: 1\nloader:\n  num_workers: 2\n"),
        ("seed: 1\nloader: {batch_size: 32}\n", "seed: 1\nloader: {batch_size: 32, num_workers: 2}\n"),
        ("loader:\n  num_workers: auto\n  collate: pad\n", "loader:\n  num_workers: 2\n  collate: pad\n"),
    ],
)
def test_write_places_the_key(tmp_path, before, after):
    path = tmp_path / "run.yaml"
    path.write_text(before)
    write_num_workers(path, 2)
    assert path.read_text() == after
    assert load_config(path).loader.num_workers == 2


def test_write_refuses_a_file_it_cannot_edit_safely(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loader: [1, 2]\n")
    with pytest.raises(ConfigError):
        write_num_workers(path, 2)
    assert path.read_text() == "loader: [1, 2]\n" and not list(tmp_path.glob("*.tmp"))


def test_auto_uses_the_stored_measurement_else_says_it_guesses(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_CACHE_DIR", str(tmp_path))
    cfg = load_config(None, ["loader.num_workers=auto"])
    _, source = resolve_auto(cfg)
    assert "not measured yet" in source
    store_num_workers(cfg, 3)
    assert resolve_auto(cfg) == (3, resolve_auto(cfg)[1]) and "measured by trainyard tune-workers" in resolve_auto(cfg)[1]
    other = load_config(None, ["loader.num_workers=auto", "loader.batch_size=32"])  # other settings: no measurement
    assert "not measured yet" in resolve_auto(other)[1]
    assert resolve_auto(load_config(None, ["loader.num_workers=1"])) == (1, "set")


@pytest.mark.timeout(300)
def test_tune_workers_measures_writes_and_auto_follows(tmp_path):
    env = {"TRAINYARD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    path = tmp_path / "run.yaml"
    path.write_text("# digits, small\nmodel:\n  width: 8\nloader:\n  num_workers: auto  # let trainyard measure\n")
    proc = run_cli("tune-workers", str(path), "--max-seconds", "4", "--write", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%", out, flags=re.M)
    assert [int(r[0]) for r in rows][:2] == [0, 1], out
    assert "model step alone:" in out and re.search(r"^data-bound: (yes|no)", out, flags=re.M), out
    pick = int(re.search(r"^RESULT recommended_num_workers (\d+)$", out, flags=re.M).group(1))
    best = max(float(r[2]) for r in rows)
    assert float(next(r[2] for r in rows if int(r[0]) == pick)) >= 0.95 * best  # the measured best
    assert path.read_text() == f"# digits, small\nmodel:\n  width: 8\nloader:\n  num_workers: {pick}  # let trainyard measure\n"
    assert yaml.safe_load(path.read_text())["loader"]["num_workers"] == pick

    # `auto` on the command line now finds the measurement for this config
    train = run_cli(
        "train",
        str(path),
        "loader.num_workers=auto",
        f"track.root={tmp_path / 'runs'}",
        "trainer.max_steps=2",
        "trainer.epochs=1",
        "track.backends=[]",
        "trainer.progress=false",
        env=env,
    )
    assert train.returncode == 0, train.stderr
    assert f"loader.num_workers=auto -> {pick}: measured by trainyard tune-workers" in train.stdout


def test_write_needs_a_file():
    proc = run_cli("tune-workers", "loader.batch_size=32", "--write")
    assert proc.returncode == 2 and proc.stderr.startswith("trainyard: error: --write: needs a RUN.yaml"), proc.stderr
