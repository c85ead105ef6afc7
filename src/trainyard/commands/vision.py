"""``trainyard transforms [NAME]`` and ``trainyard preview``."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import yaml

from trainyard.config import suggest
from trainyard.errors import ConfigError


def example_entry(name: str) -> str:
    """A YAML list entry for ``name``, with working arguments where it needs some."""
    from trainyard.data.transforms import EXAMPLES

    args = EXAMPLES.get(name, {})
    return f"- {name}: " + yaml.safe_dump(args, default_flow_style=True, width=1000, sort_keys=False).strip()


def _doc(cls: type) -> str:
    """The class docstring as plain text: no reST roles or directives."""
    text = inspect.getdoc(cls) or ""
    text = re.sub(r":(?:class|func|meth|attr|ref):`~?([^`]+)`", r"\1", text)
    text = re.sub(r"^\.\. [\w-]+::.*$", "", text, flags=re.M)
    text = text.replace("``", "`")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def transforms(args: argparse.Namespace) -> int:
    from trainyard.data.transforms import NOT_PER_IMAGE, available, signature

    table = available()
    if args.name:
        if args.name not in table:
            raise ConfigError(
                f"transform {args.name!r}: not in "
                f"torchvision.transforms.v2{suggest(args.name, table) or '; run `trainyard transforms` for the list'}"
            )
        cls = table[args.name]
        print(signature(cls))
        if args.name in NOT_PER_IMAGE:
            needs, why = NOT_PER_IMAGE[args.name]
            print(f"\nNot for data.train_transforms / data.eval_transforms: it {why}.")
        else:
            print(f"\nIn a run config:\n  data:\n    train_transforms:\n      {example_entry(args.name)}")
        print(f"\n{_doc(cls)}")
        return 0

    per_image = [n for n in table if n not in NOT_PER_IMAGE]
    print(f"torchvision.transforms.v2: {len(table)} transforms. In a run config, data.train_transforms and data.eval_transforms")
    print("are lists of `- Name: {arg: value}` entries, applied in order to each uint8 image tensor; float conversion and")
    print("normalisation with the dataset's mean and std are added unless the list does them. `trainyard transforms NAME` documents one.\n")
    print(f"For one image ({len(per_image)}):")
    for name in per_image:
        print(f"  {signature(table[name])}")
    print(f"\nNot for per-sample pipelines ({len(NOT_PER_IMAGE)}):")
    for name in table:
        if name in NOT_PER_IMAGE:
            print(f"  {name:<26} {NOT_PER_IMAGE[name][1]}")
    return 0


def preview_figure(cfg, n: int):
    """A labelled grid of ``n`` training samples after the training transforms, picked at random (seeded by ``seed``)."""
    import torch

    from trainyard.data import build_data
    from trainyard.track.figures import labelled_grid, sample_titles

    data = build_data(cfg)
    if data.info.kind != "image":
        raise ConfigError(f"preview: data.dataset={cfg.data.dataset} gives {data.info.kind} samples, not images")
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the random augmentations draw from torch's global generator
    pick = torch.randperm(len(data.train), generator=generator)[:n].tolist()
    samples = [data.train[i] for i in pick]
    images = torch.stack([x for x, _ in samples])
    labels = [int(y) for _, y in samples]
    titles = sample_titles(labels, data.info.classes)
    return labelled_grid(images, titles, data.info.mean, data.info.std), titles


def preview(args: argparse.Namespace) -> int:
    from trainyard.commands import resolve

    if args.n < 1:
        raise ConfigError(f"--n {args.n}: must be >= 1")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: must be a .png file")
    cfg = resolve(args)
    grid, titles = preview_figure(cfg, args.n)
    shown = len(titles)
    try:
        from torchvision.utils import save_image

        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {out} ({shown} training samples of {cfg.data.dataset}, after data.train_transforms)")
    return 0
