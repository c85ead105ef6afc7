"""Data parallel: ddp (spawned, torchrun, two torchrun nodes), dp, faults, checkpoints across strategies.

All on CPU with gloo, 2 processes on 127.0.0.1. Runs share one small setup: an MLP on digits with plain
SGD, a constant learning rate and no augmentation, so 2 ranks x batch b must equal 1 process x batch 2b.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SRC, interrupt_run, run_cli

from trainyard.config import load_config
from trainyard.engine.checkpoint import load_checkpoint
from trainyard.errors import ConfigError
from trainyard.parallel import build_strategy
from trainyard.parallel.launch import first_host, launcher_env

TESTS = Path(__file__).resolve().parent
SETUP = [
    "model.name=mlp",
    "model.width=16",
    "optim.name=sgd",
    "optim.lr=0.05",
    "optim.weight_decay=0",
    "schedule.name=constant",
    "data.train_transforms=[]",
    "trainer.progress=false",
    "trainer.log_every=4",
    "trainer.histogram_every=0",
    "track.images=false",
    "track.graph=false",
]
# Every child: one thread (2 processes share 2 cores), trainyard and the fault plugin importable.
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}


def train(*args: str, resume: Path | None = None, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    first = ["--resume", str(resume)] if resume else []
    return run_cli("train", *first, *SETUP, *args, timeout=timeout, env={**ENV, **(env or {})})


def torchrun(launcher: list[str], *overrides: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m torch.distributed.run LAUNCHER -m trainyard train OVERRIDES`` in the background."""
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "trainyard", "train", *SETUP, *overrides]
    return subprocess.Popen(command, env={**os.environ, **ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(result) -> None:
    out, err = (result.stdout, result.stderr) if hasattr(result, "stdout") else result
    assert result.returncode == 0, f"exit {result.returncode}\n{out[-3000:]}\n{err[-3000:]}"


def only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def events(run: Path) -> list[Path]:
    return sorted(run.rglob("events.out.tfevents.*"))


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


# --- one single-process run and one 2-rank run of the same job --------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """single: batch 32. ddp: 2 ranks x batch 16. Twelve SGD steps each (well inside epoch 1)."""
    root = tmp_path_factory.mktemp("pair")
    common = ["trainer.epochs=1", "trainer.max_steps=12"]
    single = train(f"track.root={root / 'single'}", "loader.batch_size=32", *common)
    finished(single)
    ddp = train(f"track.root={root / 'ddp'}", "loader.batch_size=16", "parallel.strategy=ddp", "parallel.devices=2", *common)
    finished(ddp)
    return {"single": only_run(root / "single"), "ddp": only_run(root / "ddp"), "ddp_stdout": ddp.stdout, "root": root}


@pytest.mark.timeout(300)
def test_ddp_run_writes_one_run_folder(pair):
    run = pair["ddp"]
    assert status(run)["status"] == "finished"
    assert "ddp, 2 processes on cpu (gloo, spawn)" in status(run)["strategy"]
    # rank 0 alone tracks: the same event files as the single-process run, one metrics.jsonl
    assert [p.relative_to(run).parent for p in events(run)] == [p.relative_to(pair["single"]).parent for p in events(pair["single"])]
    assert len(events(run)) >= 1
    assert "loader.batch_size 16 per device, global batch 32 = 16 x 2 processes" in pair["ddp_stdout"]


@pytest.mark.timeout(300)
def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(pair):
    single, ddp = weights(pair["single"]), weights(pair["ddp"])
    assert single.keys() == ddp.keys()  # plain module keys, no "module." prefix
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-5, msg=name)
    assert (
        load_checkpoint(pair["single"] / "checkpoints" / "last.pt")["step"]
        == load_checkpoint(pair["ddp"] / "checkpoints" / "last.pt")["step"]
        == 12
    )


@pytest.mark.timeout(300)
def test_evaluation_counts_every_sample_once(pair):
    # val (143) and test (359) are odd: a padding sampler would count a sample twice on 2 ranks.
    single, ddp = status(pair["single"])["final"], status(pair["ddp"])["final"]
    for key in ("val/loss", "val/accuracy", "test/loss", "test/accuracy"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.timeout(300)
def test_checkpoint_moves_between_ddp_and_single(pair):
    """Resume the ddp run as one process (batch 32) and the single run as 2 ranks (batch 16): 12 more steps
    each. Both continue the same optimisation, momentum included, so they end with the same weights."""
    more = ["trainer.epochs=2", "trainer.max_steps=24"]
    finished(train(*more, "parallel.strategy=single", "loader.batch_size=32", resume=pair["ddp"]))
    finished(train(*more, "parallel.strategy=ddp", "parallel.devices=2", "loader.batch_size=16", resume=pair["single"]))
    for run in (pair["ddp"], pair["single"]):
        assert status(run)["status"] == "finished"
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 24
    a, b = weights(pair["ddp"]), weights(pair["single"])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


# --- torchrun: one node with 2 processes, two nodes with one each, a restart after a killed rank ------


@pytest.mark.timeout(180)
def test_torchrun_two_nodes_on_one_host(tmp_path, port):
    nodes = [
        torchrun(
            ["--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}"],
            f"track.root={tmp_path}",
            "parallel.strategy=ddp",
            "trainer.epochs=1",
            "trainer.max_steps=6",
        )
        for rank in (0, 1)
    ]
    outs = [node.communicate(timeout=170) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs
    run = only_run(tmp_path)  # node 1 wrote nothing of its own
    assert status(run)["status"] == "finished"
    assert "2 processes" in status(run)["strategy"]
    assert "test accuracy" in outs[0][0] and "test accuracy" not in outs[1][0]


@pytest.mark.timeout(240)
def test_torchrun_restarts_from_last_checkpoint_after_a_rank_is_killed(tmp_path, port):
    """torchrun --nproc_per_node=2 (c10d rendezvous): a rank killed in epoch 2, the job restarted once, resumed."""
    runs = tmp_path / "runs"
    fault = {"FAULT": "kill", "FAULT_WHEN": str(runs / "*" / "checkpoints" / "last.pt"), "FAULT_ONCE": str(tmp_path / "killed")}
    job = torchrun(
        ["--nproc_per_node=2", "--max-restarts=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=digits7"],
        f"track.root={runs}",
        "parallel.strategy=ddp",
        "trainer.epochs=3",
        "loader.batch_size=128",
        "loader.collate=ddp_faults:collate",
        env=fault,
    )
    out, err = job.communicate(timeout=230)
    assert job.returncode == 0, (out[-3000:], err[-3000:])
    assert (tmp_path / "killed").exists()  # rank 1 really died in epoch 2
    run = only_run(runs)
    assert run.name == "torchrun-digits7"  # stable across the restart: named after the rendezvous id
    assert "restart 1 of 1: resuming" in out
    assert "(gloo, torchrun, job digits7)" in status(run)["strategy"]
    assert status(run)["status"] == "finished"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ends = [(r["epoch"], r["step"]) for r in lines if "val/loss" in r]
    assert ends == [(0, 6), (1, 12), (2, 18)]  # epoch 1 before the kill, 2 and 3 after it: nothing trained twice


# --- faults under spawn -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_failing_rank_stops_every_rank_and_is_named(tmp_path):
    started = time.time()
    result = train(
        f"track.root={tmp_path}",
        "parallel.strategy=ddp",
        "parallel.devices=2",
        "parallel.timeout=30",
        "loader.collate=ddp_faults:collate",
        env={"FAULT": "raise", "FAULT_AT": "3"},
        timeout=110,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "trainyard: error: rank 1 of 2 failed: RuntimeError: injected fault on rank 1", result.stderr
    assert "ddp_faults.py" in result.stderr  # the failing rank's traceback is shown
    assert time.time() - started < 100
    assert status(only_run(tmp_path))["status"] == "failed"


@pytest.mark.timeout(120)
def test_a_hung_rank_fails_the_run_within_the_timeout(tmp_path):
    result = train(
        f"track.root={tmp_path}",
        "parallel.strategy=ddp",
        "parallel.devices=2",
        "parallel.timeout=5",
        "loader.collate=ddp_faults:collate",
        env={"FAULT": "hang", "FAULT_AT": "2"},
        timeout=110,
    )
    assert result.returncode != 0
    assert "rank 0 of 2 failed" in result.stderr  # rank 0's collective timed out waiting for rank 1


# --- in-process: launcher environments, dp fallback, bad input ----------------------------------------


def test_launcher_environments():
    torchrun_env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "job",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "TORCHELASTIC_MAX_RESTARTS": "2",
    }
    env = launcher_env(torchrun_env)
    assert (env.launcher, env.rank, env.local_rank, env.world_size, env.local_world_size) == ("torchrun", 3, 1, 4, 2)
    assert (env.master_addr, env.master_port, env.restart_count, env.max_restarts, env.run_id) == ("10.0.0.5", 29400, 1, 2, "job")
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "4242",
    }
    env = launcher_env(slurm)
    assert (env.launcher, env.rank, env.local_rank, env.world_size, env.local_world_size, env.master_addr, env.master_port) == (
        "slurm",
        5,
        1,
        8,
        4,
        "gpu07",
        12000 + 4242,
    )
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # an allocation with one task: not distributed
    assert launcher_env({}) is None
    assert [first_host(s) for s in ("n1", "n[3-5,9]", "a-[01-02]-ib,b")] == ["n1", "n3", "a-01-ib"]
    with pytest.raises(ConfigError, match="rank and world size"):
        launcher_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_dp_without_several_gpus_warns_and_runs_single(capsys):
    strategy = build_strategy(load_config(None, ["parallel.strategy=dp", "trainer.device=cpu"]))
    strategy.setup()
    model = strategy.wrap(torch.nn.Linear(2, 2))
    assert isinstance(model, torch.nn.Linear) and strategy.device == torch.device("cpu")
    assert "dp needs two or more CUDA devices (found 0); running single-device on cpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["parallel.devices=[0, 1]"], "device ids need CUDA; on CPU give a count"),
        (["parallel.backend=nccl"], "parallel.backend=nccl: needs CUDA devices"),
        (["parallel.sync_batchnorm=true"], "SyncBatchNorm needs CUDA devices"),
        (["trainer.device=mps"], "multi-process training runs on cuda or cpu"),
    ],
)
def test_bad_ddp_settings_fail_before_any_process_starts(overrides, message):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only messages")
    strategy = build_strategy(load_config(None, ["parallel.strategy=ddp", "trainer.device=cpu", *overrides]))
    with pytest.raises(ConfigError, match=message):
        strategy.launch(lambda s: pytest.fail("launched"))


def test_bad_ddp_setting_is_one_line_on_the_command_line(tmp_path):
    result = run_cli("train", f"track.root={tmp_path}", "parallel.strategy=ddp", "parallel.devices=[0, 1]", "trainer.device=cpu")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "trainyard: error: parallel.devices=[0, 1]: device ids need CUDA; on CPU give a count of processes, e.g. parallel.devices=2"
    )
    assert not tmp_path.joinpath("runs").exists() and list(tmp_path.iterdir()) == []


def test_single_strategy_under_torchrun_says_to_use_ddp(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    strategy = build_strategy(load_config(None, ["trainer.device=cpu"]))
    with pytest.raises(ConfigError, match="one of 2 processes started by torchrun; add parallel.strategy=ddp"):
        strategy.setup()


def test_a_restart_resumes_only_a_folder_its_own_job_wrote(tmp_path):
    from trainyard.parallel.launch import ProcessEnv
    from trainyard.track.rundir import write_status

    strategy = build_strategy(load_config(None, ["parallel.strategy=ddp", f"track.root={tmp_path}", "name=job"]))
    strategy.env = ProcessEnv("torchrun", 0, 0, 2, 2, "127.0.0.1", 1, restart_count=1, max_restarts=1, run_id="a1")
    run = tmp_path / "job"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    write_status(run, strategy="ddp, 2 processes on cpu (gloo, torchrun, job b2)")
    assert strategy.resume_dir() is None  # an older run of the same name: never continued by accident
    write_status(run, strategy="ddp, 2 processes on cpu (gloo, torchrun, job a1)")
    assert strategy.resume_dir() == str(run)


@pytest.mark.timeout(300)
def test_each_rank_resumes_its_own_random_stream(tmp_path):
    """Dropout draws on both ranks: a run stopped mid-epoch after step 6 and resumed ends with the weights of the
    run never stopped. last.pt holds every rank's RNG state; with rank 0's alone, rank 1 would draw rank 0's
    masks after the resume (and both ranks the same ones)."""
    job = [
        "parallel.strategy=ddp",
        "parallel.devices=2",
        "loader.batch_size=16",
        "model.dropout=0.5",
        "trainer.epochs=1",
        "trainer.max_steps=12",
        "trainer.log_every=1",
        "track.backends=[]",
    ]
    finished(train(f"track.root={tmp_path / 'full'}", *job))
    stopped = train(f"track.root={tmp_path / 'cut'}", *job, "callbacks=[stop_at:StopAt]")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    cut = only_run(tmp_path / "cut")
    state = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert state["step"] == 6 and len(state["rng_per_process"]) == 2
    assert not torch.equal(state["rng_per_process"][0]["torch"], state["rng_per_process"][1]["torch"])
    finished(train(*job, resume=cut))
    full = weights(only_run(tmp_path / "full"))
    for name, value in weights(cut).items():
        torch.testing.assert_close(value, full[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.timeout(240)
def test_ctrl_c_stops_every_rank_after_the_same_step_and_saves(tmp_path):
    """Ctrl-C reaches every process of the group, each at its own step: the ranks agree where to stop
    (at the next log step), save last.pt once and exit 130, rather than waiting on each other forever."""
    root = tmp_path / "runs"
    interrupt_run(
        [*SETUP, f"track.root={root}", "name=c", "parallel.strategy=ddp", "parallel.devices=2", "trainer.epochs=50", "loader.batch_size=8"],
        root / "c",
        env=ENV,
    )
    state = load_checkpoint(root / "c" / "checkpoints" / "last.pt")
    assert 0 < state["step"] < 50 * 82
    finished(train("trainer.epochs=1", resume=root / "c"))  # and it resumes (to a shorter end: it stops at once)
