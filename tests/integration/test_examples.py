"""The examples/ folders run as the README says: from inside each folder, ``trainyard train run.yaml``
(``python train.py`` for the Python API), with a few overrides to keep them quick. Each run must exit 0,
write a complete run folder, and learn: its test metric beats what predicting without the inputs gets.

The selected examples start together, two at a time (most of each run is importing torch on one core);
each test waits for its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SHARED_DATA

EXAMPLES = ROOT / "examples"
TIMEOUT = 240


def mnist_overrides() -> list[str]:
    """No override when the YAML's data.args.root reaches the data (a checkout beside shared/: ../shared/data from the
    project root); else the folder conftest found, as an override."""
    folder = EXAMPLES / "own_cnn_mnist"
    root = yaml.safe_load((folder / "run.yaml").read_text())["data"]["args"]["root"]
    return [] if (folder / root).resolve() == (ROOT.parent / "shared" / "data").resolve() else [f"data.args.root={SHARED_DATA}"]


# test name -> (folder, command after the python executable, given the run root)
COMMANDS = {
    "test_own_cnn_mnist": (
        "own_cnn_mnist",
        lambda root: [
            "-m",
            "trainyard",
            "train",
            "run.yaml",
            f"track.root={root}",
            "trainer.epochs=1",
            "data.max_samples=2000",
            *mnist_overrides(),
        ],
    ),
    "test_regression_diabetes": (
        "regression_diabetes",
        lambda root: ["-m", "trainyard", "train", "run.yaml", f"track.root={root}", "trainer.epochs=10", "optim.lr=0.01"],
    ),
    "test_multilabel_digits": (
        "multilabel_digits",
        lambda root: ["-m", "trainyard", "train", "run.yaml", f"track.root={root}", "trainer.epochs=6"],
    ),
    "test_python_api": ("python_api", lambda root: ["train.py", f"track.root={root}", "trainer.epochs=4"]),
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """test name -> a future of (run root, CompletedProcess), for the tests of this module that were selected."""
    here = Path(__file__).resolve()
    selected = {
        item.name for item in request.session.items if getattr(item, "path", None) is not None and Path(item.path).resolve() == here
    }
    if not SHARED_DATA.is_dir():
        selected.discard("test_own_cnn_mnist")  # skipped by its shared_data fixture
    pool = ThreadPoolExecutor(max_workers=2)

    def run(name: str):
        folder, command = COMMANDS[name]
        root = tmp_path_factory.mktemp(name)
        done = subprocess.run(
            [sys.executable, *command(root)], cwd=EXAMPLES / folder, capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ)
        )
        return root, done

    futures = {name: pool.submit(run, name) for name in COMMANDS if name in selected}
    yield futures
    pool.shutdown(wait=True)


def result(runs, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    root, done = runs[name].result()
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def finished_run(root: Path, out: str) -> tuple[Path, dict]:
    """The one run folder under ``root``, checked complete; returns it and its final metrics."""
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    assert f"run folder: {run}" in out
    points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert points and all("step" in p for p in points)
    return run, status["final"]


def load_module(path: Path):
    """An example's module under a name of its own (``digits``, ``diabetes`` are common names)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_cnn_mnist(runs, shared_data):
    tmp_path, r = result(runs, "test_own_cnn_mnist")
    run, final = finished_run(tmp_path, r.stdout)
    assert "2000 training samples" in r.stdout
    assert final["test/accuracy"] > 0.8, final  # chance: 0.1
    assert f"test accuracy {final['test/accuracy']:.4f}" in r.stdout
    assert (run / "media" / "test_confusion_matrix.png").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == "nets:SmallCNN" and config["data"]["dataset"] == "nets:mnist"


def test_regression_diabetes(runs):
    folder = EXAMPLES / "regression_diabetes"
    tmp_path, r = result(runs, "test_regression_diabetes")
    run, final = finished_run(tmp_path, r.stdout)
    assert {"test/loss", "test/mae"} <= set(final) and "test/mse" not in final  # task.metrics replaced the task's mae and mse
    assert json.loads((run / "status.json").read_text())["monitor"] == "val/loss"

    # the baseline on the same test split: predict the training split's mean target for everyone
    from trainyard.config import load_config
    from trainyard.data.user import from_splits

    cfg = load_config(run / "config.yaml")
    data = from_splits(cfg, load_module(folder / "diabetes.py").patients(), "diabetes example")
    y_train = torch.stack([data.train[i][1] for i in range(len(data.train))])
    y_test = torch.stack([data.test[i][1] for i in range(len(data.test))])
    baseline = (y_test - y_train.mean()).abs().mean().item()
    assert len(y_test) == 88 and baseline > 0.6
    assert final["test/mae"] < 0.9 * baseline, (final["test/mae"], baseline)


def test_multilabel_digits(runs):
    folder = EXAMPLES / "multilabel_digits"
    tmp_path, r = result(runs, "test_multilabel_digits")
    run, final = finished_run(tmp_path, r.stdout)
    assert json.loads((run / "status.json").read_text())["monitor"] == "val/accuracy"
    # predicting each label's majority value, without looking at the image
    y = load_module(folder / "digits.py").attributes().tensors[1]
    majority = torch.maximum(y.mean(0), 1 - y.mean(0)).mean().item()
    assert majority < 0.6
    assert final["test/accuracy"] > max(0.85, majority + 0.25), (final, majority)
    assert final["test/f1_macro"] > 0.8, final


def test_python_api(runs):
    tmp_path, r = result(runs, "test_python_api")
    run, final = finished_run(tmp_path, r.stdout)
    assert final["test/accuracy"] > 0.9, final  # the majority class: 0.63
    printed = next(line for line in r.stdout.splitlines() if line.startswith("{'test/loss'"))
    assert f"'test/accuracy': {round(final['test/accuracy'], 4)}" in printed
    prediction = next(line for line in r.stdout.splitlines() if line.startswith("P(benign) of 5 test tumours:"))
    probabilities = json.loads(prediction.split(":", 1)[1].split("true")[0])
    assert len(probabilities) == 5 and all(0 <= p <= 1 for p in probabilities)
