"""How good is `trainyard tune-workers`'s pick? CIFAR-10 PNGs (decoded per sample) with augmentation.

1. Measures, independently of the tuner and in alternating rounds, the training throughput (the loader
   feeding the model's real step) and the loader's own throughput for each num_workers.
2. Runs the tuner (its own short measurement) and reports the pick's throughput over the best measured
   in step 1: ``RESULT tuner_pick_vs_best`` (target >= 0.90).
3. Trains a short run with num_workers=0 and with the pick, and reports each run's data-wait fraction.

    python benchmarks/workers.py [--root ../shared/data/cifar10_png] [--rounds 3] [--seconds 4] [--tune-seconds 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trainyard.config import load_config  # noqa: E402
from trainyard.data import DATASETS, DataBundle, DataInfo, build_data  # noqa: E402
from trainyard.data.workers import cpu_count  # noqa: E402
from trainyard.tools.workers import _timed_pass, _train_step, candidates, measure_workers  # noqa: E402

AUGMENT = [{"RandomCrop": {"size": 32, "padding": 4}}, "RandomHorizontalFlip", {"ColorJitter": {"brightness": 0.2, "contrast": 0.2}}]
CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)


def cifar_png(cfg) -> DataBundle:
    """Stand-in until trainyard's image_folder dataset lands: torchvision's ImageFolder, decoded by torchvision.io."""
    from torchvision.datasets import ImageFolder
    from torchvision.io import decode_image

    from trainyard.data.splits import TransformedSubset
    from trainyard.data.transforms import build_pipeline

    root = Path(cfg.data.root)
    train = ImageFolder(str(root / "train"), loader=decode_image)
    test = ImageFolder(str(root / "test"), loader=decode_image)
    train_tf = build_pipeline(cfg.data.train_transforms, "data.train_transforms", mean=CIFAR_MEAN, std=CIFAR_STD)
    eval_tf = build_pipeline(cfg.data.eval_transforms, "data.eval_transforms", mean=CIFAR_MEAN, std=CIFAR_STD)
    info = DataInfo("image", len(train.classes), train.classes, in_channels=3, image_size=(32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
    return DataBundle(TransformedSubset(train, None, train_tf), None, TransformedSubset(test, None, eval_tf), info)


def config(root: Path, extra: list[str] = ()):
    # image_folder is the built-in; __main__:cifar_png (this script's own reader) stays for trainyards without it
    dataset = "image_folder" if "image_folder" in DATASETS else "__main__:cifar_png"
    overrides = [
        f"data.dataset={dataset}",
        f"data.root={root}",
        f"data.train_transforms={json.dumps(AUGMENT)}",
        "data.val_fraction=0",
        "model.name=cnn",
        "model.width=16",
        "loader.batch_size=128",
        "trainer.device=cpu",
        "loader.persistent_workers=true",
    ]
    return load_config(None, overrides + list(extra))


def independent_measurement(cfg, rounds: int, seconds: float) -> dict[int, dict[str, float]]:
    """Training and loader throughput per num_workers, medians of alternating rounds."""
    from trainyard.data.loading import build_loader, train_sampler
    from trainyard.models import build_model

    data = build_data(cfg)
    device = torch.device("cpu")
    model = build_model(cfg.model, data.info).train()
    step = _train_step(cfg, model, device)
    values = candidates(cpu_count())
    steps: dict[int, list[float]] = {n: [] for n in values}
    batches: dict[int, list[float]] = {n: [] for n in values}
    waits: dict[int, list[float]] = {n: [] for n in values}

    def loader(n):
        lc = dataclasses.replace(cfg.loader, num_workers=n)
        return build_loader(data.train, lc, device=device, sampler=train_sampler(data.train, shuffle=True, seed=0), train=True)

    for r in range(rounds):
        order = values if r % 2 == 0 else values[::-1]
        for n in order:
            s, w, _ = _timed_pass(loader(n), seconds, step, device)
            b, _, _ = _timed_pass(loader(n), seconds / 2, None, device)
            steps[n].append(s)
            waits[n].append(w)
            batches[n].append(b)
            print(f"  round {r + 1} num_workers={n}: {s:.2f} train steps/s ({w:.0%} waiting), loader alone {b:.2f} batches/s", flush=True)
    return {
        n: {"steps": statistics.median(steps[n]), "batches": statistics.median(batches[n]), "wait": statistics.median(waits[n])}
        for n in values
    }


def data_wait_of_a_run(cfg, num_workers: int, steps: int, runs_root: Path) -> tuple[float, float]:
    """A short real training run; its data-wait fraction and seconds per step, from metrics.jsonl."""
    from trainyard.engine.run import train

    name = f"nw{num_workers}-{time.time_ns()}"
    run_cfg = config(
        Path(cfg.data.root),
        [
            f"loader.num_workers={num_workers}",
            f"trainer.max_steps={steps}",
            "trainer.epochs=1",
            f"track.root={runs_root}",
            f"name={name}",
            "track.backends=[]",
            "trainer.progress=false",
            f"trainer.log_every={steps}",
            "data.test_fraction=0",
        ],
    )
    train(run_cfg)
    rows = [json.loads(line) for line in (runs_root / name / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in rows if "time/epoch_s" in r)
    return epoch["perf/data_wait_fraction"], epoch["time/epoch_s"] / epoch["step"]


def main() -> None:
    p = argparse.ArgumentParser()
    shared = next((d for d in (ROOT.parent / "shared", ROOT.parents[1] / "shared") if d.is_dir()), ROOT.parent / "shared")
    p.add_argument("--root", default=str(shared / "data" / "cifar10_png"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--tune-seconds", type=float, default=60.0)
    p.add_argument("--run-steps", type=int, default=40)
    args = p.parse_args()
    cfg = config(Path(args.root))
    print(
        f"CIFAR-10 PNG {args.root}, {cfg.data.dataset}, augmentation {AUGMENT}, batch {cfg.loader.batch_size}, "
        f"cnn width {cfg.model.width} on cpu, {cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        flush=True,
    )

    print("independent measurement (median of alternating rounds):", flush=True)
    table = independent_measurement(cfg, args.rounds, args.seconds)
    best_n = max(table, key=lambda n: table[n]["steps"])

    print(f"tuner (trainyard tune-workers, --max-seconds {args.tune_seconds:.0f}):", flush=True)
    start = time.perf_counter()
    tuning = measure_workers(
        cfg, args.tune_seconds, report=lambda m: print(f"  tuner num_workers={m.num_workers}: {m.steps_per_s:.2f} steps/s", flush=True)
    )
    tune_s = time.perf_counter() - start
    pick = tuning.best.num_workers

    print(f"{'num_workers':>11}  {'train steps/s':>13}  {'data wait':>9}  {'loader batches/s':>16}")
    for n, row in table.items():
        marks = (" <- best" if n == best_n else "") + (" <- tuner's pick" if n == pick else "")
        print(f"{n:>11}  {row['steps']:>13.2f}  {row['wait']:>9.0%}  {row['batches']:>16.2f}{marks}")

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in dict.fromkeys([0, pick, best_n]):  # before tuning, after, and the best measured when it differs
            runs[n] = data_wait_of_a_run(cfg, n, args.run_steps, Path(tmp))
    for n, (wait, step_s) in runs.items():
        print(f"short training run, num_workers={n}: {wait:.0%} of the epoch waiting for data, {step_s * 1000:.0f} ms/step")
    before, after = runs[0], runs[pick]
    print(f"RESULT tuner_seconds {tune_s:.1f}")
    print(f"RESULT tuner_pick {pick}")
    print(f"RESULT best_measured_num_workers {best_n}")
    print(f"RESULT tuner_pick_vs_best {table[pick]['steps'] / table[best_n]['steps']:.3f}")
    print(f"RESULT data_wait_before {before[0]:.3f}")
    print(f"RESULT data_wait_after {after[0]:.3f}")
    print(f"RESULT step_ms_before {before[1] * 1000:.1f}")
    print(f"RESULT step_ms_after {after[1] * 1000:.1f}")
    if best_n != pick:
        print(f"RESULT data_wait_at_best_measured {runs[best_n][0]:.3f}")


if __name__ == "__main__":
    main()
