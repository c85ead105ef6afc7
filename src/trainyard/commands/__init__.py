"""What each ``trainyard`` subcommand does, given its parsed arguments. Returns the exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainyard.config import RunConfig, load_config, to_yaml
from trainyard.errors import ConfigError


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """``[RUN.yaml] key=value ...``: the first item is the file when it has no '='."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    for item in items[1:]:
        if "=" not in item:
            raise ConfigError(f"argument {item!r}: expected key.sub=value (the YAML file, if any, comes first)")
    return None, list(items)


def resolve(args: argparse.Namespace) -> RunConfig:
    path, overrides = split_config_args(args.overrides)
    return load_config(path, overrides)


def train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        path, overrides = split_config_args(args.overrides)
        if path is not None:
            raise ConfigError(f"--resume takes overrides only, not a config file ({path}); the run's own config.yaml is used")
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        cfg = resolve(args)
    if args.doctor:
        from trainyard.doctor import run_doctor

        if not run_doctor(cfg):
            print("trainyard: doctor found a FAIL; not training", file=sys.stderr)
            return 1
    from trainyard.engine.run import train as run_training  # torch loads only once the config is valid
    from trainyard.errors import Interrupted

    try:
        run_training(cfg, resume=args.resume)
    except Interrupted as exc:
        print(f"trainyard: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def config(args: argparse.Namespace) -> int:
    from trainyard.config import explain, markdown_table

    if getattr(args, "markdown", False):
        print(markdown_table(), end="")
        return 0
    if getattr(args, "explain", None) is not None:
        section = args.explain or None
        if section is not None and "=" in section:  # `config --explain optim.lr=0.1`: an override, not a section
            args.overrides.insert(0, section)
            section = None
        cfg = resolve(args)  # a bad file or override still says so; what they set shows next to the default
        print(explain(section, cfg=cfg if args.overrides else None), end="")
        return 0
    print(to_yaml(resolve(args)), end="")
    return 0
