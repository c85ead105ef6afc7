"""Samples/s of a configured vision pipeline against the same pipeline written by hand, and tensors against PIL.

Each sample is one CIFAR-10 PNG from ../shared/data/cifar10_png, decoded and transformed:
Resize(40), RandomRotation(15), RandomCrop(32), to float, Normalize.

- trainyard: ``data.dataset=image_folder`` with those transforms by name (the dataset object the trainer loads from).
- by hand:   ``torchvision.io.decode_image`` + the same ``transforms.v2.Compose``, written out.
- PIL:       ``PIL.Image.open(...).convert("RGB")`` + the same v2 transforms on the PIL image, then ToImage.

The three run in alternating rounds over the same files, one thread; the median round counts.

    python benchmarks/vision_pipeline.py [--root ../shared/data/cifar10_png] [--samples 400] [--rounds 7]

Ends with ``RESULT pipeline_ratio`` (trainyard / by hand, target >= 0.95) and ``RESULT tensor_vs_pil``
(tensor path / PIL path, both by hand).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)  # torchvision 0.29 points image decoding at torchcodec

TRANSFORMS = [
    {"Resize": {"size": 40}},
    {"RandomRotation": {"degrees": 15}},
    {"RandomCrop": {"size": 32}},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve()
    shared = next((p / "shared" / "data" for p in here.parents if (p / "shared" / "data").is_dir()), here.parents[2] / "shared" / "data")
    parser.add_argument("--root", default=str(shared / "cifar10_png"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    from trainyard.config import load_config
    from trainyard.data import build_data

    cfg = load_config(None, ["data.dataset=image_folder", f"data.root={args.root}", "data.val_fraction=0"])
    cfg.data.train_transforms = TRANSFORMS
    data = build_data(cfg)
    train = data.train
    indices = list(range(min(args.samples, len(train))))
    paths = [train.base.paths[train.indices[i]] for i in indices]
    mean, std = list(data.info.mean), list(data.info.std)

    by_hand = v2.Compose(
        [
            v2.Resize(40),
            v2.RandomRotation(15),
            v2.RandomCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    pil_pipeline = v2.Compose(
        [
            v2.Resize(40),
            v2.RandomRotation(15),
            v2.RandomCrop(32),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )

    def run_trainyard() -> None:
        for i in indices:
            train[i]

    def run_by_hand() -> None:
        for p in paths:
            by_hand(decode_image(p, mode=ImageReadMode.RGB))

    def run_pil() -> None:
        for p in paths:
            with Image.open(p) as img:
                pil_pipeline(img.convert("RGB"))

    contenders = {"trainyard": run_trainyard, "by_hand_tensor": run_by_hand, "by_hand_pil": run_pil}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        fn()
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            t0 = time.perf_counter()
            contenders[name]()
            rates[name].append(len(indices) / (time.perf_counter() - t0))

    median = {name: statistics.median(v) for name, v in rates.items()}
    for name, value in median.items():
        print(
            f"{name:>15}: {value:8.0f} samples/s (median of {args.rounds} rounds of {len(indices)} samples; min {min(rates[name]):.0f}, "
            f"max {max(rates[name]):.0f})"
        )
    print(f"RESULT pipeline_ratio {median['trainyard'] / median['by_hand_tensor']:.3f}")
    print(f"RESULT tensor_vs_pil {median['by_hand_tensor'] / median['by_hand_pil']:.3f}")
    print(f"RESULT trainyard_samples_per_s {median['trainyard']:.0f}")


if __name__ == "__main__":
    main()
