"""track.backends takes the import path of the user's own Tracker subclass, next to tensorboard and wandb."""

from __future__ import annotations

import pytest

from trainyard.config import load_config
from trainyard.engine.run import train
from trainyard.errors import ConfigError
from trainyard.track import Tracker

SEEN: list[tuple[str, object]] = []


class Recorder(Tracker):
    """Keeps what trainyard hands a backend: built like the built-ins, cls(cfg, run_dir, resume_step=...)."""

    def __init__(self, cfg, run_dir, resume_step=None):
        SEEN.append(("init", run_dir.name))

    def log_metrics(self, metrics, step, epoch):
        SEEN.append(("metrics", dict(metrics)))

    def log_hparams(self, hparams, metrics):
        SEEN.append(("hparams", dict(metrics)))

    def close(self, status):
        SEEN.append(("close", status))


class NotATracker:
    pass


def test_a_user_tracker_gets_the_run_like_the_built_ins(tmp_path):
    SEEN.clear()
    cfg = load_config(
        None,
        [
            f"track.root={tmp_path}",
            "name=mine",
            f"track.backends=[{__name__}:Recorder]",
            "trainer.epochs=1",
            "model.width=8",
            "trainer.progress=false",
            "trainer.log_every=5",
            "track.images=false",
        ],
    )
    final = train(cfg)
    assert SEEN[0] == ("init", "mine") and SEEN[-1] == ("close", "finished")
    logged = [m for kind, m in SEEN if kind == "metrics"]
    assert any("train/loss" in m for m in logged) and any("val/accuracy" in m for m in logged)
    hparams = [m for kind, m in SEEN if kind == "hparams"]
    assert hparams and hparams[0]["test/accuracy"] == final["test/accuracy"]


def test_a_backend_that_is_no_tracker_is_one_line():
    from trainyard.track import check_backends

    with pytest.raises(ConfigError, match=rf"track.backends: {__name__}:NotATracker is not a trainyard.track.Tracker subclass"):
        check_backends([f"{__name__}:NotATracker"])
    with pytest.raises(ConfigError, match="unknown backend 'tensorbord'.*did you mean tensorboard"):
        check_backends(["tensorbord"])
