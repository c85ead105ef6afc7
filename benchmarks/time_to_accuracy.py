"""Time to accuracy on MNIST: wall seconds until the test accuracy first reaches 99.0% (tested after every epoch),
trainyard's published recipe (examples/mnist_fast.yaml) against the official pytorch/examples ``mnist/main.py``
recipe written as a plain script (``plain_main`` below: its ``Net``, Adadelta lr=1.0, StepLR gamma 0.7 stepped
per epoch, batch 64, test batch 1000, ToTensor + Normalize per sample through a DataLoader), on the same local
files (``../shared/data/MNIST``), alternating, as whole processes: the clock starts before the process is
started and stops when it prints that the target was reached (imports, data loading and every test pass count).

    python benchmarks/time_to_accuracy.py [--repeats 1] [--max-epochs 14] [--target 0.99] [--set key=value ...]

The trainyard side is ``trainyard train examples/mnist_fast.yaml`` with one callback of this file
(``TestEachEpoch``) that tests after every epoch, as the plain script does. Each side stops at the target.
Ends with ``RESULT mnist_99_seconds_trainyard``, ``RESULT mnist_99_seconds_plain`` (medians),
``RESULT mnist_99_time_ratio`` (trainyard / plain; the issue's target: <= 0.5 on CPU) and the accuracies
at which each side stopped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data")


class TestEachEpoch:
    """A trainyard callback: test after every epoch, print ``EPOCH n acc unix_time``, and end the process
    (``REACHED``) once the test accuracy reaches ``target``."""

    def __init__(self, target: float = 0.99):
        self.target = target

    def on_epoch_end(self, trainer, metrics) -> None:
        from trainyard.engine.evaluate import evaluate

        result = evaluate(trainer.model, trainer.test_loader, trainer.strategy, prefix="test", task=trainer.task, autocast=trainer.autocast)
        acc = result.metrics["test/accuracy"]
        print(f"EPOCH {trainer.epoch} {acc:.4f} {time.time():.3f}", flush=True)
        if acc >= self.target:
            print(f"REACHED {acc:.4f} {time.time():.3f}", flush=True)
            os._exit(0)  # the measurement is over; nothing after it is timed


def plain_main(root: str, max_epochs: int, target: float) -> None:
    """pytorch/examples mnist/main.py, CPU, reading the local files; stops once the test accuracy reaches ``target``."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torch.optim.lr_scheduler import StepLR
    from torchvision import datasets, transforms

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = torch.flatten(self.dropout1(x), 1)
            x = self.dropout2(F.relu(self.fc1(x)))
            return F.log_softmax(self.fc2(x), dim=1)

    torch.manual_seed(1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(root, train=True, download=False, transform=transform)
    test_set = datasets.MNIST(root, train=False, download=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    for epoch in range(1, max_epochs + 1):
        model.train()
        for data, target_ in train_loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target_)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target_ in test_loader:
                correct += model(data).argmax(dim=1).eq(target_).sum().item()
        acc = correct / len(test_set)
        print(f"EPOCH {epoch} {acc:.4f} {time.time():.3f}", flush=True)
        if acc >= target:
            print(f"REACHED {acc:.4f} {time.time():.3f}", flush=True)
            return
        scheduler.step()


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds from start to the target, or inf; the last tested accuracy; epochs run)."""
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith(("EPOCH ", "REACHED "))]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    epochs = [line for line in lines if line[0] == "EPOCH"]
    reached = [line for line in lines if line[0] == "REACHED"]
    seconds = float(reached[0][2]) - start if reached else float("inf")
    return seconds, float(epochs[-1][2]), len(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=14)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(DATA))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides on top of the recipe (to try variants)")
    args = parser.parse_args()
    if args.plain_child:
        plain_main(args.root, args.max_epochs, args.target)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    recipe = ROOT / "examples" / "mnist_fast.yaml"
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # alternating, whole processes
            plain.append(
                timed(
                    [
                        sys.executable,
                        __file__,
                        "--plain-child",
                        "--root",
                        args.root,
                        "--max-epochs",
                        str(args.max_epochs),
                        "--target",
                        str(args.target),
                    ],
                    env,
                )
            )
            ours.append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "trainyard",
                        "train",
                        str(recipe),
                        f"data.root={args.root}",
                        f"track.root={tmp}",
                        f"name=tta-{i}",
                        f"callbacks=[{{time_to_accuracy:TestEachEpoch: {{target: {args.target}}}}}]",
                        *args.set,
                    ],
                    env,
                )
            )
            print(
                f"run {i}: plain {plain[-1][0]:.1f} s ({plain[-1][2]} epochs, acc {plain[-1][1]:.4f}) | "
                f"trainyard {ours[-1][0]:.1f} s ({ours[-1][2]} epochs, acc {ours[-1][1]:.4f})",
                flush=True,
            )
    s_ours, s_plain = statistics.median(s for s, _, _ in ours), statistics.median(s for s, _, _ in plain)
    print(f"RESULT mnist_99_seconds_trainyard {s_ours:.1f}")
    print(f"RESULT mnist_99_seconds_plain {s_plain:.1f}")
    print(f"RESULT mnist_99_time_ratio {s_ours / s_plain:.3f}")
    print(f"RESULT mnist_99_accuracy_trainyard {statistics.median(a for _, a, _ in ours):.4f}")
    print(f"RESULT mnist_99_accuracy_plain {statistics.median(a for _, a, _ in plain):.4f}")


if __name__ == "__main__":
    main()
