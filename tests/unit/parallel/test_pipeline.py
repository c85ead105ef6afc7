"""parallel.strategy=pipeline: two stage processes (gloo) train exactly as one device does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import interrupt_run, run_cli

from trainyard.config import load_config
from trainyard.engine.checkpoint import load_checkpoint
from trainyard.engine.run import train
from trainyard.track.jsonl import read_metrics

# No BatchNorm or dropout; SGD with momentum and a constant rate, so a checkpoint resumes with any epoch count.
# log_every=1: metrics.jsonl holds every step's loss. Digits: 1295 training samples, so each epoch ends
# with a batch of 15 that the pipeline splits into 3 micro-batches.
COMMON = [
    "model.name=mlp",
    "model.width=16",
    "optim.name=sgd",
    "optim.lr=0.2",
    "schedule.name=constant",
    "trainer.log_every=1",
    "trainer.clip_grad_norm=1.0",
    "track.backends=[]",
    "track.images=false",
    "trainer.histogram_every=0",
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, port):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by the stage processes
    monkeypatch.setenv("MASTER_PORT", str(port))
    torch.set_num_threads(1)


def step_losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["train/loss"] for row in read_metrics(run_dir) if "perf/samples_per_s" in row}


def run(tiny, *overrides: str) -> Path:
    cfg = load_config(overrides=[*tiny, *COMMON, *overrides])
    train(cfg)
    return Path(cfg.track.root) / cfg.name


@pytest.mark.timeout(240)
def test_pipeline_matches_single_step_for_step(tiny):
    single = run(tiny, "name=single")
    pipeline = run(tiny, "name=pipeline", "parallel.strategy=pipeline", "parallel.devices=2", "parallel.microbatches=4")

    expected, got = step_losses(single), step_losses(pipeline)
    assert len(expected) == 2 * 21 and got.keys() == expected.keys()
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    final_single, final_pipeline = ({k: v for row in read_metrics(d) for k, v in row.items()} for d in (single, pipeline))
    for key in ("val/loss", "val/accuracy", "test/loss", "test/accuracy"):
        assert final_pipeline[key] == pytest.approx(final_single[key], abs=1e-5)

    # the checkpoint holds the whole model (gathered from both stages) and its optimizer state
    a, b = load_checkpoint(single / "checkpoints" / "last.pt"), load_checkpoint(pipeline / "checkpoints" / "last.pt")
    assert list(b["model"]) == list(a["model"])
    for key in a["model"]:
        assert torch.allclose(b["model"][key], a["model"][key], atol=1e-5), key
    assert b["optimizer"]["param_groups"][0]["params"] == a["optimizer"]["param_groups"][0]["params"]
    for i, state in a["optimizer"]["state"].items():
        assert torch.allclose(b["optimizer"]["state"][i]["momentum_buffer"], state["momentum_buffer"], atol=1e-5)
    status = (pipeline / "status.json").read_text()
    assert "stage 0 cpu blocks 0-2" in status and "bubble 20.0%" in status


@pytest.mark.timeout(240)
def test_1f1b_checkpoint_resumes_under_single(tiny):
    single = run(tiny, "name=single")  # two uninterrupted epochs on one device
    pipeline = run(
        tiny,
        "name=pipeline",
        "trainer.epochs=1",
        "parallel.strategy=pipeline",
        "parallel.devices=2",
        "parallel.schedule=1f1b",
        "parallel.microbatches=2",
        "parallel.split=[0,2]",
    )  # stage 1 starts with ReLU(inplace)
    cfg = load_config(pipeline / "config.yaml", ["parallel.strategy=single", "trainer.epochs=2"])
    train(cfg, resume=pipeline)

    expected, got = step_losses(single), step_losses(pipeline)
    assert got.keys() == expected.keys()  # epoch 1 from the pipeline, epoch 2 resumed on one device
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step


def test_microbatches_must_divide_the_batch(tiny):
    result = run_cli("train", *tiny, "parallel.strategy=pipeline", "parallel.devices=2", "parallel.microbatches=3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "trainyard: error: parallel.microbatches=3: loader.batch_size=64 does not split into equal micro-batches; use one of [1, 2, 4, 8, "
        "16, 32, 64]"
    ]


@pytest.mark.timeout(180)
def test_error_in_a_stage_process_is_one_line(tiny, port):
    # the split is checked in each stage process, once the model exists: the error travels back to the launcher
    result = run_cli(
        "train",
        *tiny,
        "parallel.strategy=pipeline",
        "parallel.devices=2",
        "model.depth=2",
        "parallel.split=[0,5]",
        env={"MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "trainyard: error: parallel.split=[0, 5]: stage starts must increase and lie in 1..2 (the model has 3 blocks)"
    ]


def test_optimizer_state_splits_into_stages_and_merges_back():
    """What each stage loads from a whole-model checkpoint is its slice; gathered again, it is the whole."""
    import copy

    from trainyard.parallel.pipeline import PipelineParallel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    whole = torch.optim.AdamW(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
    whole.step()
    saved = copy.deepcopy(whole.state_dict())

    cfg = load_config(overrides=["parallel.strategy=pipeline", "parallel.devices=[cpu,cpu]", "parallel.split=[0,2]", "track.graph=false"])
    parts, stages = [], []
    for stage in range(2):
        strategy = PipelineParallel(cfg)
        strategy.stage = stage
        module = strategy.wrap(copy.deepcopy(model))
        optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
        strategy.load_optimizer_state_dict(optimizer, saved)
        own = [p for p in module.parameters()]
        assert len(optimizer.state_dict()["state"]) == len(own)  # only this stage's parameters
        strategy._gather = lambda obj, parts=parts, last=stage == 1: parts.append(obj) or (list(parts) if last else None)
        stages.append(strategy.optimizer_state_dict(optimizer))
    merged = stages[1]
    assert stages[0] is None and merged["param_groups"] == saved["param_groups"]
    assert merged["state"].keys() == saved["state"].keys()
    for i, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(merged["state"][i][key], value), (i, key)


@pytest.mark.timeout(240)
def test_ctrl_c_stops_every_stage_after_the_same_step_and_saves(tmp_path):
    """Ctrl-C reaches both stage processes, each at its own step: they agree where to stop, save the
    whole model once and exit 130 (stages that stop apart would wait on each other's send/recv forever)."""
    root = tmp_path / "runs"
    interrupt_run(
        [
            f"track.root={root}",
            "name=p",
            "model.name=mlp",
            "parallel.strategy=pipeline",
            "parallel.devices=2",
            "parallel.microbatches=2",
            "trainer.epochs=50",
            "trainer.log_every=5",
            "loader.batch_size=16",
            "data.train_transforms=[]",
            "trainer.progress=false",
        ],
        root / "p",
        env={"OMP_NUM_THREADS": "1"},
    )
    state = load_checkpoint(root / "p" / "checkpoints" / "last.pt")
    assert state["step"] > 0 and {"1.weight", "5.weight"} <= set(state["model"])  # both stages: the whole model
