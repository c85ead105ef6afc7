"""CIFAR-10 time to 94%: an airbench-like network trained by ``trainyard train``, the whole training set held in
memory (on the GPU when there is one) with batched augmentation (random crop with padding, horizontal flip),
tested after every epoch; wall seconds from the process start until the test accuracy first reaches the target.

    python benchmarks/cifar10_speedrun.py [--root DIR] [--target 0.94] [--epochs 10] [--set key=value ...]

The published anchor is airbench94: 94% in 2.6 s on an A100 (Jordan, arXiv 2404.00498). This recipe keeps its
network shape (a 2x2 stem, three blocks of conv-pool-BN-GELU-conv-BN-GELU, widths 64/256/256, a scaled linear
head), label smoothing 0.2, batch 1024 and Nesterov SGD (lr 0.4 one-cycle, momentum 0.9, David Page's fast-ResNet
values), and leaves out its whitening initialisation, lookahead (EMA) and test-time flips: what is measured is
trainyard's loop and data path, not a re-implementation of airbench.

Data: ``DIR/cifar-10-batches-py`` (the full 50,000/10,000 set, torchvision's files) when it is there, else the
CIFAR-10 PNG subset ``DIR/cifar10_png`` (5,000 training and 965 test images, ``data.in_memory=true``), on which
94% is out of reach: the run then reports its best accuracy and says so. Ends with ``RESULT cifar10_seconds_to_target``
(inf when not reached), ``RESULT cifar10_best_accuracy``, ``RESULT cifar10_epochs`` and ``RESULT cifar10_train_images``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data")


class Mul(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def conv_group(channels_in: int, channels_out: int) -> nn.Sequential:
    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, momentum=0.4, eps=1e-12)  # airbench's: short runs, statistics that follow fast

    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding="same", bias=False),
        nn.MaxPool2d(2),
        bn(channels_out),
        nn.GELU(),
        nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False),
        bn(channels_out),
        nn.GELU(),
    )


def airbench_net(num_classes: int = 10, in_channels: int = 3, widths: list[int] | None = None) -> nn.Sequential:
    """airbench94's network (model.name=cifar10_speedrun:airbench_net; model.args.widths to shrink it for a CPU check)."""
    block1, block2, block3 = widths or [64, 256, 256]
    stem = 24
    return nn.Sequential(
        nn.Conv2d(in_channels, stem, 2, padding=0, bias=True),  # airbench's whitening layer, here trained from random
        nn.GELU(),
        conv_group(stem, block1),
        conv_group(block1, block2),
        conv_group(block2, block3),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(block3, num_classes, bias=False),
        Mul(1 / 9),
    )


def recipe(data_root: Path, epochs: int) -> tuple[list[str], str]:
    """The trainyard overrides for the data found under ``data_root``, and what that data is."""
    full = data_root / "cifar-10-batches-py"
    if full.is_dir():
        data = ["data.dataset=cifar10", f"data.root={data_root}", "data.download=false"]
        what = "CIFAR-10, 50,000 training images"
    elif (data_root / "cifar10_png" / "train").is_dir():
        data = ["data.dataset=image_folder", f"data.root={data_root / 'cifar10_png'}", "data.in_memory=true"]
        what = "the CIFAR-10 PNG subset (5,000 training images): the 94% target needs the full set"
    else:
        sys.exit(f"no CIFAR-10 under {data_root}: expected cifar-10-batches-py/ or cifar10_png/train/")
    return [
        *data,
        "data.val_fraction=0",  # the test split is the measure
        "data.train_transforms=[{RandomCrop: {size: 32, padding: 2, padding_mode: reflect}}, {RandomHorizontalFlip: {}}]",
        "loader.batched=true",
        "loader.batch_size=1024",
        "model.name=cifar10_speedrun:airbench_net",
        "task.loss=CrossEntropyLoss",
        "task.loss_args={label_smoothing: 0.2}",
        "optim.name=sgd",
        "optim.lr=0.4",
        "optim.momentum=0.9",
        "optim.nesterov=true",
        "optim.weight_decay=5e-4",
        "schedule.name=onecycle",
        f"trainer.epochs={epochs}",
        "trainer.histogram_every=0",
        "trainer.progress=false",
        "track.images=false",
        "track.graph=false",
    ], what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(DATA), help="a folder holding cifar-10-batches-py/ or cifar10_png/")
    parser.add_argument("--target", type=float, default=0.94)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides on top of the recipe")
    args = parser.parse_args()
    overrides, what = recipe(Path(args.root), args.epochs)
    bench = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(bench), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "trainyard",
            "train",
            *overrides,
            f"track.root={tmp}",
            "name=speedrun",
            f"callbacks=[{{time_to_accuracy:TestEachEpoch: {{target: {args.target}}}}}]",
            *args.set,
        ]
        start = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"trainyard failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    started = next((line for line in proc.stdout.splitlines() if line.startswith("trainyard: ") and "training samples" in line), "")
    print(started)
    epochs = [line.split() for line in proc.stdout.splitlines() if line.startswith("EPOCH ")]
    for _, epoch, acc, at in epochs:
        print(f"epoch {epoch}: test accuracy {acc} at {float(at) - start:.1f} s")
    reached = [line.split() for line in proc.stdout.splitlines() if line.startswith("REACHED ")]
    seconds = float(reached[0][2]) - start if reached else float("inf")
    best = max((float(acc) for _, _, acc, _ in epochs), default=float("nan"))
    print(f"data: {what}; target {args.target:.2%}: " + (f"reached in {seconds:.1f} s" if reached else "not reached"))
    print(f"RESULT cifar10_seconds_to_target {seconds:.1f}")
    print(f"RESULT cifar10_best_accuracy {best:.4f}")
    print(f"RESULT cifar10_epochs {len(epochs)}")
    images = re.search(r"([\d,]+) training samples", started)
    print(f"RESULT cifar10_train_images {images.group(1).replace(',', '') if images else 0}")


if __name__ == "__main__":
    main()
