"""Every config key has help text; `trainyard config --explain` prints it; docs/config.md is the tree's table."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainyard.cli import main
from trainyard.config import all_keys, key_help, markdown_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"
REGENERATE = "regenerate it: trainyard config --markdown > docs/config.md"


def test_every_key_has_help_text():
    entries = key_help()
    assert [e.key for e in entries] == all_keys()
    missing = [e.key for e in entries if len(e.help.strip()) < 5]
    assert not missing, f"config keys without help text (opt(default, 'help') in src/trainyard/config.py): {missing}"


def test_generated_table_is_in_sync_with_the_tree():
    assert DOCS.is_file(), f"docs/config.md is missing; {REGENERATE}"
    assert DOCS.read_text(encoding="utf-8") == markdown_table(), f"docs/config.md differs from src/trainyard/config.py; {REGENERATE}"


def test_every_key_appears_in_the_table():
    table = DOCS.read_text(encoding="utf-8")
    for e in key_help():
        assert f"`{e.key}`" in table, e.key


@pytest.mark.parametrize(
    "key, shows",
    [
        ("optim.lr", ["optim.lr  float (> 0)  default 0.003", "learning rate"]),
        ("trainer.precision", ["trainer.precision  str (32, bf16, fp16)  default '32'", "GradScaler"]),
        ("loader.num_workers", ["loader.num_workers  int | auto (>= 0)  default 0", "tune-workers"]),
        ("data.val_fraction", ["data.val_fraction  float (>= 0, < 1)  default 0.1"]),
        ("trainer.progress_every_s", ["trainer.progress_every_s  float (>= 0)  default 30.0", "no extra host sync"]),
    ],
)
def test_explain_prints_type_default_allowed_and_help(capsys, key, shows):
    assert main(["config", "--explain", key]) == 0
    out = capsys.readouterr().out
    for text in shows:
        assert text in out


def test_explain_a_section_and_everything(capsys):
    assert main(["config", "--explain", "schedule"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("schedule: The learning-rate schedule")
    assert "  schedule.warmup_steps  " in out and "  optim.lr  " not in out
    assert main(["config", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("top level:") and all(f"  {k}  " in out for k in ("seed", "optim.lr", "track.wandb.mode", "parallel.split"))


def test_explain_an_unknown_section_is_one_line(capsys):
    assert main(["config", "--explain", "optimm"]) == 2
    err = capsys.readouterr().err
    assert "--explain optimm: no such section or key" in err and "did you mean optim?" in err


def test_train_help_points_to_explain(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "trainyard config --explain" in " ".join(capsys.readouterr().out.split())


def test_explain_shows_what_a_file_or_override_sets(capsys, tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("trainer: {epochs: 3}\n")
    assert main(["config", str(run), "optim.lr=0.01", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "  optim.lr  float (> 0)  default 0.003  set: 0.01\n" in out
    assert "  trainer.epochs  int (>= 1)  default 30  set: 3\n" in out
    assert "  optim.momentum  float (>= 0, < 1)  default 0.9\n" in out  # left at its default: no "set"
    assert main(["config", "optim.lr=-1", "--explain"]) == 2  # a bad value still says so
    assert "optim.lr=-1: must be > 0" in capsys.readouterr().err
