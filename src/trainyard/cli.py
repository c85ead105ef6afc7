"""The ``trainyard`` command: parses and dispatches, nothing more.

Each subcommand names the function that does its work as ``"module:function"``; that function takes
the parsed arguments and returns the exit code. Errors meant for people (:class:`TrainyardError`)
print as one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from trainyard.errors import TrainyardError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides", nargs="*", metavar="[RUN.yaml] key.sub=value", help="an optional YAML file, then overrides such as optim.lr=0.01"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainyard", description="Train PyTorch models from one config, tracked, on one CPU or many GPUs."
    )
    from trainyard import __version__

    parser.add_argument("--version", action="version", version=f"trainyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="train a run (no arguments: the default job on bundled digits)",
        epilog="every config key, its type, default, allowed values and help: `trainyard config --explain [SECTION]` "
        "(e.g. --explain optim), or the table in docs/config.md",
    )
    _config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoints/last.pt")
    p.add_argument("--doctor", action="store_true", help="run `trainyard doctor` first and stop on a FAIL")
    p.set_defaults(handler="trainyard.commands:train")

    p = sub.add_parser("config", help="print the resolved config as YAML, or every key's help (--explain)")
    _config_args(p)
    p.add_argument(
        "--explain",
        nargs="?",
        const="",
        default=None,
        metavar="SECTION",
        help="every key (or those of one section or key, e.g. optim or trainer.precision): type, default, allowed values, help",
    )
    p.add_argument("--markdown", action="store_true", help="every key as a Markdown table (what docs/config.md holds)")
    p.set_defaults(handler="trainyard.commands:config")

    p = sub.add_parser("transforms", help="list torchvision.transforms.v2 transforms, or document one")
    p.add_argument("name", nargs="?", help="a transform name, e.g. RandomRotation")
    p.set_defaults(handler="trainyard.commands.vision:transforms")

    p = sub.add_parser("preview", help="write a PNG grid of augmented training samples with their labels")
    _config_args(p)
    p.add_argument("--out", default="preview.png", help="PNG file to write")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.set_defaults(handler="trainyard.commands.vision:preview")

    p = sub.add_parser("tune-workers", help="measure the loader's throughput per num_workers and recommend one")
    _config_args(p)
    p.add_argument("--max-seconds", type=float, default=60.0, help="time budget for the measurement")
    p.add_argument("--write", action="store_true", help="store the recommended value into the YAML file")
    p.set_defaults(handler="trainyard.commands.workers:tune_workers")

    p = sub.add_parser("doctor", help="pre-flight checks on the real config, data and model")
    _config_args(p)
    p.add_argument(
        "--only", action="append", metavar="CHECK[,CHECK]", help="run only these checks (labels, forward, inputs, overfit, ..., lr)"
    )
    p.add_argument("--skip", action="append", metavar="CHECK[,CHECK]", help="skip these checks")
    p.set_defaults(handler="trainyard.commands.doctor:main")

    p = sub.add_parser("runs", help="a table of runs")
    p.add_argument("root", nargs="?", default=None, help="runs folder (default: track.root, runs)")
    p.add_argument("--sort", default="started", help="column to sort by")
    p.add_argument("--reverse", action="store_true", help="sort descending")
    p.set_defaults(handler="trainyard.commands.tracking:runs")

    p = sub.add_parser("compare", help="overlaid learning curves of several runs as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument(
        "--metric", default=None, help="the metric to overlay (default: the runs' trainer.monitor, e.g. val/accuracy or val/loss)"
    )
    p.add_argument("--out", default="curves.png")
    p.set_defaults(handler="trainyard.commands.tracking:compare")

    p = sub.add_parser("report", help="a self-contained HTML report of one run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", default="report.html")
    p.set_defaults(handler="trainyard.commands.tracking:report")

    p = sub.add_parser("board", help="start TensorBoard on 127.0.0.1 and print its URL")
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.set_defaults(handler="trainyard.commands.tracking:board")

    p = sub.add_parser("sweep", help="a grid, random or TPE search over hyperparameters (an Optuna study), one run per trial")
    p.add_argument("overrides", nargs="*", metavar="[RUN.yaml] key=v1,v2,...")
    p.add_argument("--random", type=int, default=None, metavar="N", help="N random trials instead of the grid (--search random --trials N)")
    p.add_argument("--search", default=None, choices=("grid", "random", "tpe"), help="grid (default), random or tpe (Optuna's TPE sampler)")
    p.add_argument("--trials", type=int, default=None, metavar="N", help="number of trials of a random or tpe search")
    p.add_argument("--seed", type=int, default=0, help="seed of the random trials and of TPE")
    p.add_argument("--prune", default=None, choices=("median", "hyperband"), help="stop trials whose validation metric falls behind")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="K trials at once, as processes on this machine")
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="the study on a database server (postgresql://...) for several machines; default: embedded in the sweep folder",
    )
    p.add_argument("--name", default=None, help="sweep name (its folder under track.root; the study's name)")
    p.add_argument("--resume", metavar="SWEEP_DIR", default=None, help="continue an interrupted sweep (the same command does it too)")
    p.set_defaults(handler="trainyard.commands.tracking:sweep")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args.handler.split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except TrainyardError as exc:
        print(f"trainyard: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("trainyard: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        from trainyard.errors import CANNOT_WRITE, write_error

        if exc.errno not in CANNOT_WRITE:
            raise
        print(f"trainyard: error: {write_error(exc)}", file=sys.stderr)  # a full disk or a read-only folder
        return 1
    finally:
        sys.stdout.flush()


def entry() -> None:
    code = main()
    if "torch.distributed" in sys.modules:  # something ran that may have been a rank; nothing heavy is imported otherwise
        from trainyard.parallel.launch import end_rank_process, launcher_env

        if launcher_env() is not None:  # a rank torchrun or srun started
            end_rank_process(code)
    sys.exit(code)
