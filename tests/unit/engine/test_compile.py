"""trainer.compile: compiled training equals eager training, checkpoints hold the plain weights (a compiled run's
checkpoint resumes eager and the other way round), and where compiling cannot work the run trains eager after
one warning line: a missing C++ compiler (a real process), a compiler error at the first step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from trainyard.config import load_config
from trainyard.engine.checkpoint import load_checkpoint
from trainyard.engine.run import train
from trainyard.errors import ConfigError

# No dropout, no augmentation, no partial last batch (a new shape would compile again), no evaluation.
COMMON = [
    "model.name=mlp",
    "model.width=8",
    "optim.name=sgd",
    "optim.lr=0.1",
    "schedule.name=constant",
    "loader.batch_size=128",
    "loader.drop_last=true",
    "data.val_fraction=0",
    "data.test_fraction=0",
    "data.train_transforms=[]",
    "trainer.progress=false",
    "trainer.log_every=5",
    "track.backends=[]",
]


def config(tmp_path: Path, *overrides: str):
    return load_config(None, [f"track.root={tmp_path / 'runs'}", *COMMON, *overrides])


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_compiled_training_equals_eager_and_checkpoints_cross_over(tmp_path):
    train(config(tmp_path, "name=eager", "trainer.epochs=3"))
    run = tmp_path / "runs" / "mixed"
    from torch._dynamo.utils import counters  # a test may read dynamo's own count; src/ may not

    before = counters["stats"]["unique_graphs"]
    train(config(tmp_path, "name=mixed", "trainer.epochs=1", "trainer.compile=true"))  # epoch 1 compiled
    assert counters["stats"]["unique_graphs"] > before  # something was compiled, not eager under another name
    compiled = weights(run)
    assert not any("_orig_mod" in k for k in compiled)
    assert compiled.keys() == weights(tmp_path / "runs" / "eager").keys()
    train(config(tmp_path, "name=mixed", "trainer.epochs=2"), resume=run)  # epoch 2 eager, from the compiled checkpoint
    train(config(tmp_path, "name=mixed", "trainer.epochs=3", "trainer.compile=true"), resume=run)  # epoch 3 compiled again
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    eager, mixed = weights(tmp_path / "runs" / "eager"), weights(run)
    for k in eager:  # compiled kernels sum in another order: equal within float32 rounding, not bitwise
        torch.testing.assert_close(mixed[k], eager[k], rtol=1e-4, atol=1e-5)


# No BatchNorm (its statistics would follow each rank's half batch). fsdp shards an nn.Sequential's children with
# parameters on their own: the MLP's linear layers, each compiled between FSDP's all-gathers.
PARALLEL = [
    "model.name=mlp",
    "model.width=16",
    "optim.name=adamw",
    "optim.lr=0.01",
    "schedule.name=constant",
    "data.train_transforms=[]",
    "trainer.epochs=1",
    "trainer.max_steps=8",
    "trainer.progress=false",
    "trainer.log_every=4",
    "trainer.histogram_every=0",
    "track.images=false",
    "track.graph=false",
    "track.backends=[]",
]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_compiled_ddp_and_fsdp_ranks_train_like_one_eager_process(tmp_path):
    """2 compiled ranks of batch 16 against one eager process of batch 32. TORCH_LOGS=graph_code prints each graph
    dynamo traces: compiling the DDP wrapper or the fully_shard root (as trainyard once did) traced none, silently."""
    from conftest import SRC

    train(load_config(None, [f"track.root={tmp_path / 'runs'}", "name=single", *PARALLEL, "loader.batch_size=32"]))
    reference = weights(tmp_path / "runs" / "single")
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC), "TORCH_LOGS": "graph_code"}
    # ddp: the whole model, one graph; fsdp: one per sharded block, each recomputed in backward (activation
    # checkpointing, whose BatchNorm-buffer context torch.compile refused: the run trained eager)
    for strategy, graphs, more in (("ddp", 1, []), ("fsdp", 3, ["parallel.activation_checkpointing=true"])):
        proc = run_cli(
            "train",
            f"track.root={tmp_path / 'runs'}",
            f"name={strategy}",
            *PARALLEL,
            *more,
            f"parallel.strategy={strategy}",
            "parallel.devices=2",
            "loader.batch_size=16",
            "trainer.compile=true",
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "compile default" in proc.stdout and "training eager" not in proc.stderr
        for rank in (0, 1):
            traced = [line for line in proc.stderr.splitlines() if line.startswith(f"[rank{rank}]") and "TRACED GRAPH" in line]
            assert len(traced) == graphs, (strategy, rank, traced)
        compiled = weights(tmp_path / "runs" / strategy)
        assert compiled.keys() == reference.keys()
        for k in reference:  # compiled kernels sum in another order: equal within float32 rounding
            torch.testing.assert_close(compiled[k], reference[k], rtol=0, atol=1e-5, msg=f"{strategy} {k}")


def test_a_compile_error_at_the_first_step_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, capsys):
    train(config(tmp_path, "name=eager", "trainer.max_steps=3"))
    eager = weights(tmp_path / "runs" / "eager")
    capsys.readouterr()

    class Broken(torch.nn.Module):  # what torch.compile gives back when the compiler fails at the first call
        def forward(self, x):
            raise RuntimeError("backend compiler failed\nwith a long story below")

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: Broken())
    train(config(tmp_path, "name=fallback", "trainer.max_steps=3", "trainer.compile=max-autotune"))
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "trainer.compile" in line]
    assert warned == ["trainyard: trainer.compile: compiling failed, training eager from here: RuntimeError: backend compiler failed"]
    fallback = weights(tmp_path / "runs" / "fallback")
    for k in eager:  # the eager steps from the same start: the same weights
        assert torch.equal(fallback[k], eager[k]), k


def test_without_a_cpp_compiler_the_run_says_so_and_trains_eager(tmp_path):
    proc = run_cli(
        "train",
        f"track.root={tmp_path / 'runs'}",
        "name=nocc",
        "trainer.max_steps=2",
        "trainer.compile=true",
        *COMMON,
        env={"CXX": str(tmp_path / "no-such-compiler")},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "compiler" in line]
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "no-such-compiler" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    start = next(line for line in proc.stdout.splitlines() if line.startswith("trainyard: ") and "training samples" in line)
    assert "compile off" in start and re.search(r"threads \d+, workers 0", start), start


def test_compile_is_refused_under_a_strategy_it_does_not_support(tmp_path):
    from trainyard.engine.compile import check_compile

    with pytest.raises(ConfigError, match=r"trainer.compile=true: works with parallel.strategy single, ddp, fsdp, not pipeline"):
        check_compile(config(tmp_path, "trainer.compile=true", "parallel.strategy=pipeline"))
    check_compile(config(tmp_path, "trainer.compile=true", "parallel.strategy=ddp"))


def test_a_torch_compile_that_refuses_at_once_leaves_the_model_eager(monkeypatch):
    from trainyard.engine.compile import CompiledForward

    def refuse(model, mode=None):
        raise RuntimeError("torch.compile is not supported on this Python version")

    monkeypatch.setattr(torch, "compile", refuse)
    warned: list[str] = []
    model = torch.nn.Linear(2, 2)
    strategy = type("S", (), {"device": torch.device("cpu"), "unwrap": staticmethod(lambda m: m)})()
    compiled = CompiledForward(model, True, strategy=strategy, warn=warned.append)
    assert not compiled.active and "forward" not in vars(model)  # the module's own forward, untouched
    assert warned == ["trainyard: trainer.compile: training eager: RuntimeError: torch.compile is not supported on this Python version"]


def test_the_compiled_forward_runs_only_in_training_steps_and_the_model_gets_its_own_back(monkeypatch):
    from trainyard.engine import compile as compile_module

    calls: list[str] = []

    def recording_compile(fn, mode=None):  # stands in for torch.compile: says when the compiled forward runs
        def compiled(*args, **kwargs):
            calls.append("compiled")
            return fn(*args, **kwargs)

        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(compile_module, "compiler_missing", lambda device: None)
    model = torch.nn.Linear(2, 2)
    strategy = type("S", (), {"device": torch.device("cpu"), "unwrap": staticmethod(lambda m: m)})()
    compiled = compile_module.CompiledForward(model, True, strategy=strategy, warn=lambda line: None)
    x = torch.ones(1, 2)
    model(x)  # evaluation, a graph trace: eager
    assert calls == []

    def forward_backward(m, x, y, loss_fn, autocast, scale):
        return m(x).sum(), None

    compiled.wrap(forward_backward)(model, x, None, None, None, None)
    assert calls == ["compiled"]
    model(x)
    assert calls == ["compiled"]  # eager again after the step
    compiled.restore()
    assert "forward" not in vars(model) and model.forward.__func__ is torch.nn.Linear.forward
