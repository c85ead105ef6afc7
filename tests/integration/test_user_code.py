"""trainyard trains the user's own code: models, datasets, tasks, losses, optimizers, schedules and callbacks
named by import path (``usercode:Regressor``) or passed to ``trainyard.fit()``.

Each run is checked against what it must equal: a plain PyTorch loop seeded and ordered the way trainyard
seeds and orders (equivalence), one process with the doubled batch (ddp), the uninterrupted run (resume),
the same model trained with the task's loss (a model's own loss). The user code is ``usercode.py`` next to
this file, a real module: subprocesses find it from their working directory or PYTHONPATH, in-process
runs from sys.path.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SRC, run_cli
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import usercode  # noqa: E402

import trainyard  # noqa: E402
from trainyard.cli import main  # noqa: E402
from trainyard.engine.checkpoint import load_checkpoint  # noqa: E402
from trainyard.errors import ConfigError  # noqa: E402

# Children: trainyard from this checkout and usercode importable; as many threads as this process uses, so
# a subprocess's float arithmetic matches the plain loop run here.
ENV = {"PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]), "OMP_NUM_THREADS": str(torch.get_num_threads())}
QUIET = ["trainer.progress=false", "track.images=false", "track.graph=false", "trainer.histogram_every=0", "trainer.log_every=5"]


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def assert_close_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def finished(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def plain_loop(
    model, dataset, *, seed: int, batch_size: int, epochs: int, optimizer, scheduler=None, loss_of, per_epoch_schedule: bool = False
):
    """What trainyard does for one process, in plain PyTorch: reseed before training (run_process seeds
    ``cfg.seed + 7919 * rank`` once the model is built), the DistributedSampler order with set_epoch, a loader
    generator of its own (so iterating draws nothing from the global RNG, as trainyard's loaders draw nothing)."""
    torch.manual_seed(seed)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator())
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_of(model(x), y).backward()
            optimizer.step()
            if scheduler is not None and not per_epoch_schedule:
                scheduler.step()
        if scheduler is not None and per_epoch_schedule:
            scheduler.step()
    return model


# --- 1. equivalence with a plain PyTorch loop -------------------------------------------------------


def test_regression_from_import_paths_equals_a_plain_loop(tmp_path):
    """The CLI, the model and dataset by import path from the working directory, SGD and StepLR by their torch
    names with their args, stepped per epoch; dropout on, so the seeding before training must match too."""
    seed, batch, epochs = 3, 32, 3
    overrides = [
        f"track.root={tmp_path}",
        "name=cli",
        f"seed={seed}",
        *QUIET,
        "model.name=usercode:Regressor",
        "model.args={hidden: 16, dropout: 0.1}",
        "data.dataset=usercode:diabetes",
        "data.val_fraction=0",
        "data.test_fraction=0",
        "task=regression",
        "task.loss=MSELoss",
        "optim.name=SGD",
        "optim.lr=0.05",
        "optim.weight_decay=0",
        "optim.args={momentum: 0.9}",
        "schedule.name=StepLR",
        "schedule.args={step_size: 1, gamma: 0.5}",
        "schedule.interval=epoch",
        f"loader.batch_size={batch}",
        f"trainer.epochs={epochs}",
    ]
    # cwd: usercode is found from the working directory, as `python -m` finds it
    finished(run_cli("train", *overrides, cwd=HERE, env={"OMP_NUM_THREADS": ENV["OMP_NUM_THREADS"], "PYTHONPATH": str(SRC)}))

    torch.manual_seed(seed)
    model = usercode.Regressor(10, hidden=16, dropout=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    plain_loop(
        model,
        usercode.diabetes(),
        seed=seed,
        batch_size=batch,
        epochs=epochs,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_of=lambda out, y: F.mse_loss(out.reshape(y.shape), y),
        per_epoch_schedule=True,
    )

    state = load_checkpoint(tmp_path / "cli" / "checkpoints" / "last.pt")
    assert state["step"] == epochs * 14  # 442 samples in batches of 32, no split held out
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5**epochs)
    assert_close_weights(state["model"], model.state_dict(), atol=1e-6)


def test_multilabel_through_fit_equals_a_plain_loop(tmp_path):
    """trainyard.fit() with a model instance and a Dataset, task, loss, optimizer and schedule by name."""
    seed, batch, epochs = 5, 64, 2
    torch.manual_seed(seed)
    model = usercode.Tagger(64, 4, hidden=32, dropout=0.1)
    initial = copy.deepcopy(model.state_dict())
    result = trainyard.fit(
        model,
        usercode.digit_attributes(),
        task="multilabel",
        loss="BCEWithLogitsLoss",
        optimizer="SGD",
        scheduler="constant",
        name="fit",
        config={
            "seed": seed,
            "track.root": str(tmp_path),
            "optim.lr": 0.2,
            "optim.weight_decay": 1e-4,
            "optim.args": {"momentum": 0.5, "nesterov": True},
            "data.val_fraction": 0,
            "data.test_fraction": 0,
            "loader.batch_size": batch,
            "trainer.epochs": epochs,
            "trainer.keep_host_memory": False,
            "trainer.progress": False,
            "track.images": False,
            "track.graph": False,
            "trainer.histogram_every": 0,
            "trainer.log_every": 5,
        },
    )
    assert result.run_dir == tmp_path / "fit" and 0.0 < result["train/accuracy"] <= 1.0

    torch.manual_seed(seed)
    plain = usercode.Tagger(64, 4, hidden=32, dropout=0.1)
    assert_same_weights(plain.state_dict(), initial)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.2, momentum=0.5, nesterov=True, weight_decay=1e-4)
    plain_loop(
        plain,
        usercode.digit_attributes(),
        seed=seed,
        batch_size=batch,
        epochs=epochs,
        optimizer=optimizer,
        loss_of=lambda out, y: F.binary_cross_entropy_with_logits(out, y),
    )

    state = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert state["step"] == epochs * 29  # 1,797 samples in batches of 64
    assert_close_weights(state["model"], plain.state_dict(), atol=1e-6)
    assert_same_weights(model.state_dict(), state["model"])  # single: the instance passed was trained in place


# --- 2. ddp: 2 CPU processes of batch b equal one process of batch 2b -------------------------------

DDP_JOB = [
    *QUIET,
    "model.name=usercode:Regressor",
    "model.args={hidden: 16}",
    "data.dataset=usercode:diabetes",
    "task=regression",
    "data.val_fraction=0",
    "data.test_fraction=0",
    "optim.name=SGD",
    "optim.lr=0.05",
    "optim.weight_decay=0",
    "optim.args={momentum: 0.9}",
    "schedule.name=constant",
    "trainer.epochs=2",
]
# 442 samples: rank r of 2 takes positions r, r+2, ... of each epoch's permutation, so two batches of 17 hold
# the same 34 samples as one batch of 34, every step of both epochs (13 steps each, no short batch, no padding)
FIT_DDP = """
import copy
import sys

import torch

import trainyard
import usercode

if __name__ == "__main__":
    torch.manual_seed(0)  # the init a config run gets from seed=0
    model = usercode.Regressor(10, hidden=16)
    before = copy.deepcopy(model.state_dict())
    result = trainyard.fit(model, usercode.diabetes(), task="regression", optimizer="SGD", scheduler="constant", name="fit_ddp", config={
        "track.root": sys.argv[1], "parallel.strategy": "ddp", "parallel.devices": 2, "loader.batch_size": 17,
        "optim.lr": 0.05, "optim.weight_decay": 0, "optim.args": {"momentum": 0.9}, "trainer.epochs": 2,
        "data.val_fraction": 0, "data.test_fraction": 0, "trainer.progress": False, "track.images": False, "track.graph": False,
        "trainer.histogram_every": 0, "trainer.log_every": 5,
    })
    print("RESULT", result.run_dir, result["train/loss"])
    print("PARENT MODEL UNCHANGED", all(torch.equal(before[k], v) for k, v in model.state_dict().items()))
"""


@pytest.fixture(scope="module")
def single_of_34(tmp_path_factory) -> Path:
    """The one-process run of batch 34 that both ddp runs must equal."""
    root = tmp_path_factory.mktemp("ddp")
    assert main(["train", *DDP_JOB, f"track.root={root}", "name=single", "loader.batch_size=34", "trainer.keep_host_memory=false"]) == 0
    assert load_checkpoint(root / "single" / "checkpoints" / "last.pt")["step"] == 26
    return root / "single"


@pytest.mark.timeout(240)
def test_user_model_under_ddp_equals_one_process_of_the_doubled_batch(tmp_path, single_of_34):
    finished(
        run_cli(
            "train",
            *DDP_JOB,
            f"track.root={tmp_path}",
            "name=ddp",
            "loader.batch_size=17",
            "parallel.strategy=ddp",
            "parallel.devices=2",
            timeout=200,
            env=ENV,
        )
    )
    state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state["step"] == 26
    assert_close_weights(state["model"], weights(single_of_34), atol=1e-5)  # plain module keys, no "module." prefix


@pytest.mark.timeout(240)
def test_fit_under_ddp_from_a_script_equals_one_process_of_the_doubled_batch(tmp_path, single_of_34):
    script = tmp_path / "fit_ddp.py"
    script.write_text(textwrap.dedent(FIT_DDP), encoding="utf-8")
    fit = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=200, env={**os.environ, **ENV}
    )
    finished(fit)
    assert f"RESULT {tmp_path / 'fit_ddp'} " in fit.stdout  # the final metrics came back from rank 0's process
    state = load_checkpoint(tmp_path / "fit_ddp" / "checkpoints" / "last.pt")
    assert state["step"] == 26
    assert_close_weights(state["model"], weights(single_of_34), atol=1e-5)
    assert "PARENT MODEL UNCHANGED True" in fit.stdout  # the processes train copies (fit's docstring)


def test_lambda_loss_under_ddp_is_one_line_before_any_process_starts(tmp_path):
    with pytest.raises(ConfigError) as info:
        trainyard.fit(
            usercode.Regressor(10),
            usercode.diabetes(),
            task="regression",
            loss=lambda out, y: F.mse_loss(out.view(-1), y),
            config={"parallel.strategy": "ddp", "parallel.devices": 2, "track.root": str(tmp_path / "runs")},
        )
    message = str(info.value)
    assert "\n" not in message
    assert "parallel.strategy=ddp" in message and "pickled copy of the loss" in message and "cannot be pickled" in message
    assert "lambda" in message and "module level" in message
    assert not (tmp_path / "runs").exists()


# --- 3. resume: stopped mid-epoch by a real SIGTERM, resumed from the CLI --------------------------


def test_user_code_run_stopped_by_sigterm_resumes_bit_for_bit(tmp_path):
    """Dropout on and a validation split: the resumed run must restore the RNG and skip the batches already
    trained on. The stop comes from usercode's Recorder, which sends the process SIGTERM after step 20 (of 13 a
    epoch): the real signal handler, at a step known in advance."""
    job = [
        f"track.root={tmp_path}",
        *QUIET,
        "trainer.keep_host_memory=false",
        "model.name=usercode:Regressor",
        "model.args={hidden: 16, dropout: 0.2}",
        "data.dataset=usercode:diabetes",
        "task=regression",
        "data.val_fraction=0.1",
        "data.test_fraction=0",
        "optim.name=adamw",
        "schedule.name=cosine",
        "loader.batch_size=32",
        "trainer.epochs=3",
    ]
    log = tmp_path / "hooks.jsonl"
    cut = run_cli("train", *job, "name=cut", f'callbacks=[{{"usercode:Recorder": {{path: {log}, sigterm_at: 20}}}}]', env=ENV)
    assert main(["train", *job, "name=full"]) == 0
    assert cut.returncode == 128 + signal.SIGTERM, cut.stderr[-3000:]
    assert "resume with: trainyard train --resume" in cut.stderr and "Traceback" not in cut.stderr
    stopped = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (stopped["step"], stopped["epoch"], stopped["batch"]) == (20, 1, 7)  # mid-epoch 2
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["status"] == "interrupted"

    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 39
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    loads = [r for r in map(json.loads, log.read_text().splitlines()) if r["hook"] == "checkpoint_load"]
    assert loads == [{"hook": "checkpoint_load", "step": 20, "stored": {"saves": 2, "step": 20, "token": "saved-at-20"}}]


# --- 4. bad input: one line, exit 2, nothing written --------------------------------------------------

BROKEN_MODULE = "import torch\nimport a_package_nobody_installed\n"
BASE = ["model.name=usercode:Regressor", "data.dataset=usercode:diabetes", "task=regression", *QUIET]
BAD_INPUTS = {
    "module_does_not_import": (
        ["model.name=broken_net:Net"],
        ["model.name=broken_net:Net", "cannot import broken_net", "ModuleNotFoundError: No module named 'a_package_nobody_installed'"],
    ),
    "name_missing_from_module": (
        ["model.name=usercode:Regresor"],
        ["model.name=usercode:Regresor", "has no 'Regresor'", "did you mean Regressor"],
    ),
    "model_args_rejected": (
        ["model.args={hiden: 8}"],
        ["model.args", "Regressor(in_features: int, hidden: int = 16, dropout: float = 0.0)", "'hiden'", "did you mean hidden"],
    ),
    "item_not_a_pair": (
        ["data.dataset=usercode:triples"],
        ["data.dataset=usercode:triples", "item 0 is a tuple of 3", "expected an (input, target) pair"],
    ),
    "float_targets_classification": (
        ["task=classification"],
        ["data.dataset=usercode:diabetes", "targets are fractional", "task=classification takes class ids", "task=regression"],
    ),
    "class_ids_multilabel": (
        ["model.name=usercode:Tagger", "data.dataset=usercode:digit_classes", "task=multilabel"],
        ["data.dataset=usercode:digit_classes", "targets are class ids", "task=multilabel takes a 0/1 vector", "task=classification"],
    ),
    "unknown_metric": (
        ["task.metrics=[MeanAbsolutError]"],
        ["task.metrics[0]", "unknown metric 'MeanAbsolutError'", "did you mean MeanAbsoluteError"],
    ),
    "unknown_loss": (["task.loss=MSELos"], ["task.loss=MSELos", "unknown loss", "did you mean MSELoss"]),
    "hook_wrong_signature": (
        ["callbacks=[usercode:BadSignature]"],
        ["callbacks[0]=usercode:BadSignature", "BadSignature.on_epoch_end(", "trainer)", "must take (trainer, metrics)"],
    ),
    "hook_name_typo": (
        ["callbacks=[usercode:TypoHook]"],
        ["callbacks[0]=usercode:TypoHook", "TypoHook.on_epoch_ends is not a hook", "did you mean on_epoch_end"],
    ),
}


def bad_run(case: str, base: Path, capsys, monkeypatch) -> tuple[int, str, str, Path]:
    """One bad input through the CLI: ``module_does_not_import`` in a fresh ``python -m trainyard`` (an import
    that fails in a real interpreter), the others through ``main()`` in this process (each a process would be
    mostly torch's import). Returns (exit code, stderr, stdout, the run root)."""
    overrides, _ = BAD_INPUTS[case]
    root = base / case
    (base / "broken_net.py").write_text(BROKEN_MODULE, encoding="utf-8")
    args = ["train", *BASE, f"track.root={root}", *overrides]
    if case == "module_does_not_import":
        env = {**ENV, "PYTHONPATH": os.pathsep.join([ENV["PYTHONPATH"], str(base)])}
        result = run_cli(*args, timeout=120, env=env)
        return result.returncode, result.stderr, result.stdout, root
    monkeypatch.syspath_prepend(str(base))
    code = main([*args, "trainer.keep_host_memory=false"])
    out = capsys.readouterr()
    return code, out.err, out.out, root


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_user_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    code, err, out, root = bad_run(case, tmp_path, capsys, monkeypatch)
    _, expected = BAD_INPUTS[case]
    assert code == 2, f"exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainyard: error: "), err
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert not root.exists() or not any(root.iterdir()), f"run folder written: {list(root.iterdir())}"


# --- 5. callbacks: the order of the hooks; a value kept in last.pt comes back on resume ---------------


def test_callback_hooks_in_order_and_checkpoint_state_round_trips(tmp_path):
    log = tmp_path / "hooks.jsonl"
    job = [
        f"track.root={tmp_path}",
        "name=cb",
        *QUIET,
        "trainer.keep_host_memory=false",
        "model.name=usercode:Regressor",
        "data.dataset=usercode:diabetes",
        "task=regression",
        "data.val_fraction=0.2",
        "data.test_fraction=0.1",
        "loader.batch_size=64",
        "trainer.epochs=2",
        f'callbacks=[{{"usercode:Recorder": {{path: {log}}}}}]',
    ]
    assert main(["train", *job]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = 5  # 442 - 44 test - 80 val = 318 training samples, batches of 64

    def epoch(e, first):
        return (
            [("epoch_start", e)]
            + ([("first_batch", None)] if first else [])
            + [("step_end", e * steps + i) for i in range(1, steps + 1)]
            + [("validation_end", None), ("epoch_end", e + 1), ("checkpoint_save", (e + 1) * steps)]
        )

    expected = [("run_start", None)] + epoch(0, True) + epoch(1, False) + [("run_end", 2 * steps)]
    seen = [
        (r["hook"], r.get("epoch", r.get("step"))) if r["hook"] not in ("run_start", "first_batch", "validation_end") else (r["hook"], None)
        for r in rows
    ]
    assert seen == expected
    assert rows[0] == {"hook": "run_start", "step": 0, "epoch": 0}
    assert next(r for r in rows if r["hook"] == "first_batch")["batch"] == 64
    assert all(r["loss_is_tensor"] and r["loss_ndim"] == 0 for r in rows if r["hook"] == "step_end")
    assert all(r["keys"] == ["val/loss", "val/mae", "val/mse"] for r in rows if r["hook"] == "validation_end")

    stored = load_checkpoint(tmp_path / "cb" / "checkpoints" / "last.pt")["recorder"]
    assert stored == {"saves": 2, "step": 2 * steps, "token": f"saved-at-{2 * steps}"}
    log.unlink()
    assert main(["train", "--resume", str(tmp_path / "cb"), "trainer.epochs=3"]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["hook"] for r in rows[:3]] == ["checkpoint_load", "run_start", "epoch_start"]  # loaded before the run starts again
    assert rows[0]["stored"] == stored and rows[1]["step"] == 2 * steps and rows[2]["epoch"] == 2
    assert "first_batch" not in [r["hook"] for r in rows]  # the first batch of the run was logged before
    assert load_checkpoint(tmp_path / "cb" / "checkpoints" / "last.pt")["recorder"]["step"] == 3 * steps


# --- 6. a model that computes its own loss ----------------------------------------------------------

OWN_LOSS = [
    *QUIET,
    "trainer.keep_host_memory=false",
    "data.dataset=usercode:dict_inputs",
    "model.args={in_features: 10}",
    "optim.name=sgd",
    "optim.lr=0.05",
    "schedule.name=constant",
    "loader.batch_size=32",
    "trainer.epochs=2",
]
SPLIT = ["data.val_fraction=0.1", "data.test_fraction=0.1"]
NO_SPLIT = ["data.val_fraction=0", "data.test_fraction=0"]
TASK_LOSS = ["model.name=usercode:DictRegressor", "task=regression", "task.loss=MSELoss"]  # the same network, its MSE computed by the task
SCALAR = ["model.name=usercode:ScalarLossRegressor", "task.name=usercode:NoLossTask"]  # a task with no loss at all


def final_of(run: Path) -> dict[str, float]:
    return json.loads((run / "status.json").read_text())["final"]


def test_model_returning_loss_and_logits_trains_like_the_task_loss(tmp_path):
    """{"loss", "logits"} under task=regression with task.loss=L1Loss: the model's own MSE must win over the
    task's loss (else the weights differ), its logits feed the metrics."""
    assert main(["train", f"track.root={tmp_path}", *OWN_LOSS, *SPLIT, "name=task_loss", *TASK_LOSS]) == 0
    assert (
        main(
            [
                "train",
                f"track.root={tmp_path}",
                *OWN_LOSS,
                *SPLIT,
                "name=dict",
                "model.name=usercode:OwnLossRegressor",
                "task=regression",
                "task.loss=L1Loss",
            ]
        )
        == 0
    )
    assert_close_weights(weights(tmp_path / "dict"), weights(tmp_path / "task_loss"), atol=1e-6)
    own, reference = final_of(tmp_path / "dict"), final_of(tmp_path / "task_loss")
    for key in ("train/loss", "train/mae", "val/loss", "val/mae", "test/loss", "test/mae"):  # the model's MSE where L1 would be the task's
        assert own[key] == pytest.approx(reference[key], rel=1e-5), key


def test_model_returning_only_a_scalar_loss_trains_without_a_task_loss(tmp_path):
    assert main(["train", f"track.root={tmp_path}", *OWN_LOSS, *NO_SPLIT, "name=task_loss", *TASK_LOSS]) == 0
    assert main(["train", f"track.root={tmp_path}", *OWN_LOSS, *NO_SPLIT, "name=scalar", *SCALAR]) == 0
    assert_close_weights(weights(tmp_path / "scalar"), weights(tmp_path / "task_loss"), atol=1e-6)
    assert final_of(tmp_path / "scalar")["train/loss"] == pytest.approx(final_of(tmp_path / "task_loss")["train/loss"], rel=1e-5)


def test_model_returning_only_a_scalar_loss_is_validated_and_tested(tmp_path):
    """With validation and test splits: evaluation takes the scalar as the loss and scores no metrics without predictions."""
    assert main(["train", f"track.root={tmp_path}", *OWN_LOSS, *SPLIT, "name=task_loss", *TASK_LOSS]) == 0
    assert main(["train", f"track.root={tmp_path}", *OWN_LOSS, *SPLIT, "name=scalar", *SCALAR]) == 0
    assert_close_weights(weights(tmp_path / "scalar"), weights(tmp_path / "task_loss"), atol=1e-6)
    own, reference = final_of(tmp_path / "scalar"), final_of(tmp_path / "task_loss")
    for key in ("val/loss", "test/loss"):
        assert own[key] == pytest.approx(reference[key], rel=1e-5), key
