"""Progress off a terminal: a plain line every trainer.progress_every_s while an epoch runs (issue 21), and the
one-line notes a run prints at its start for what it chose on its own."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli

from trainyard.engine.callbacks import Every, ProgressLines, format_seconds, progress_text, validation_text

LINE = re.compile(r"^progress: step (\d+)/(\d+)  epoch (\d+)/(\d+) (\d+)%")

SLOW_STEP = '''
import time

class SlowStep:
    """Every optimizer step takes at least 40 ms: a long epoch in a few seconds."""

    def on_step_end(self, trainer, step, loss):
        time.sleep(0.04)
'''


# --- the interval on known counts --------------------------------------------------------------


def test_every_is_due_once_per_interval_on_known_clocks():
    timer = Every(30.0, start=0.0)
    due = [t for t in range(0, 101) if timer.due(float(t))]  # a step every second
    assert due == [30, 60, 90]
    timer = Every(30.0, start=0.0)
    due = [t for t in range(0, 101, 7) if timer.due(float(t))]  # a step every 7 s: the first step past each beat
    assert due == [35, 63, 91]
    timer = Every(30.0, start=0.0)
    due = [t for t in (10, 95, 96, 130) if timer.due(float(t))]  # a step of 85 s skips beats: one line, no burst
    assert due == [95, 130]
    assert not any(Every(0.0, start=0.0).due(float(t)) for t in range(1000))  # 0: off


def test_progress_text_on_known_numbers():
    text = progress_text(1200, 9000, 3, 30, 123, 300, 412.4, 70.0, 1503.0, 0.41234, "step 1150")
    assert text == "progress: step 1200/9000  epoch 3/30 41%  412 samples/s  eta epoch 1m10s, run 25m03s  loss 0.4123 (step 1150)"
    assert progress_text(5, 42, 1, 2, 5, 21, None, None, None) == "progress: step 5/42  epoch 1/2 24%"
    assert [format_seconds(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def fake_trainer(step=0):
    cfg = SimpleNamespace(
        trainer=SimpleNamespace(progress_every_s=30.0, epochs=2, max_steps=None, accumulate=1, log_every=50),
        loader=SimpleNamespace(batch_size=10),
    )
    return SimpleNamespace(
        cfg=cfg,
        is_primary=True,
        step=step,
        epoch=0,
        batch_in_epoch=step,
        steps_per_epoch=100,
        train_loader=[None] * 100,
        strategy=SimpleNamespace(world_size=1),
        history=[],
        last_logged={"train/loss": 0.5, "step": 25},
    )


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_at_the_interval_with_a_fake_clock_and_none_on_a_terminal():
    out, clock, trainer = io.StringIO(), Clock(), fake_trainer()
    cb = ProgressLines(stream=out, clock=clock)
    cb.on_run_start(trainer)
    cb.on_epoch_start(trainer, 0)
    for step in range(1, 101):  # 100 steps of 1 s each: lines at 30, 60 and 90 s
        clock.now = float(step)
        trainer.step = trainer.batch_in_epoch = step
        cb.on_step_end(trainer, step, None)
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group(1) for line in lines] == ["30", "60", "90"]
    assert lines[0] == "progress: step 30/200  epoch 1/2 30%  10 samples/s  eta epoch 1m10s, run 2m50s  loss 0.5000 (step 25)"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    cb = ProgressLines(stream=tty, clock=clock)
    clock.now = 0.0
    cb.on_run_start(fake_trainer())
    clock.now = 1000.0
    cb.on_step_end(trainer, 1, None)
    assert tty.getvalue() == ""  # on a terminal the progress bar (trainer.progress) is the display

    from trainyard.engine.callbacks import Callbacks

    hooks = Callbacks([ProgressLines(stream=tty, clock=clock)])
    hooks.call("on_run_start", fake_trainer())
    assert hooks.step_end == []  # off: the step loop calls nothing per step for it
    hooks = Callbacks([ProgressLines(stream=io.StringIO(), clock=clock)])
    hooks.call("on_run_start", fake_trainer())
    assert len(hooks.step_end) == 1


# --- a real run with stdout piped ----------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_piped_run_prints_progress_lines_at_the_interval_during_a_long_epoch(tmp_path, tiny):
    (tmp_path / "slowstep.py").write_text(SLOW_STEP)
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2] / 'src'}"}
    every = 0.3
    start = time.perf_counter()
    r = run_cli(
        "train",
        *tiny,
        "trainer.epochs=1",
        "model.name=mlp",
        "callbacks=[slowstep:SlowStep]",
        f"trainer.progress_every_s={every}",
        cwd=tmp_path,
        env=env,
    )
    wall = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    progress = [(i, LINE.match(line)) for i, line in enumerate(lines) if line.startswith("progress: ")]
    epoch_line = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))
    steps = [int(m.group(1)) for _, m in progress]
    assert len(steps) >= 2, r.stdout  # 21 steps of >= 40 ms: at least 0.84 s of training
    assert len(steps) <= wall / every, f"more lines than the interval allows: {len(steps)} in {wall:.1f}s\n{r.stdout}"
    assert all(m is not None for _, m in progress), r.stdout
    assert steps == sorted(set(steps)) and all(i < epoch_line for i, _ in progress), r.stdout  # during the epoch, in order
    total = int(progress[0][1].group(2))
    assert total == 21 and all(0 < s <= total for s in steps)
    assert all("samples/s" in lines[i] and "eta epoch" in lines[i] for i, _ in progress[1:]), r.stdout

    quiet = run_cli(
        "train",
        *tiny,
        "trainer.epochs=1",
        "model.name=mlp",
        "callbacks=[slowstep:SlowStep]",
        "trainer.progress_every_s=0",
        cwd=tmp_path,
        env=env,
    )
    assert quiet.returncode == 0 and "progress: " not in quiet.stdout, quiet.stdout


def test_start_notes_say_what_the_run_chose(tmp_path, tiny):
    assert validation_text(6000, 0.1) == "validation: 6,000 held out of train (data.val_fraction=0.1)"
    r = run_cli("train", *tiny, "trainer.epochs=1", "model.name=mlp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trainyard: validation: 143 held out of train (data.val_fraction=0.1)" in r.stdout.splitlines(), r.stdout
    assert any(line.startswith("trainyard: augmentation: RandomAffine (the digits default") for line in r.stdout.splitlines()), r.stdout


# --- the data-wait warning's fix is a command to run as the run was started ----------------------------


def test_the_data_wait_fix_is_the_command_the_run_was_started_with():
    from trainyard.config import load_config
    from trainyard.engine.callbacks import data_wait_fix

    cfg = load_config()
    fix = data_wait_fix(cfg, 0, "", ["/venv/bin/trainyard", "train", "run.yaml", "optim.lr=0.1", "loader.num_workers=0"])
    assert fix.startswith(
        "`trainyard tune-workers run.yaml optim.lr=0.1 --write` (it sets loader.num_workers in run.yaml), "
        "then `trainyard train run.yaml optim.lr=0.1` again"
    )
    fix = data_wait_fix(cfg, 0, "", ["/src/trainyard/__main__.py", "train", "trainer.epochs=2", "--doctor"])
    assert fix.startswith("`trainyard tune-workers trainer.epochs=2`, then `trainyard train trainer.epochs=2 loader.num_workers=auto`")
    fix = data_wait_fix(cfg, 0, "", ["/venv/bin/trainyard", "train", "--resume", "runs/a"], run_dir=Path("runs/a"))
    assert fix.startswith("`trainyard tune-workers runs/a/config.yaml`, then loader.num_workers=auto")
    assert "RUN.yaml" not in data_wait_fix(cfg, 0, "", ["/venv/bin/trainyard", "sweep", "optim.lr=1,2"], run_dir=Path("runs/s/trial-000"))
