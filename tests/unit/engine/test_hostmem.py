"""trainer.keep_host_memory changes the allocator of the whole process: on for the trainyard command (the
config's default), off under trainyard.fit() in the caller's process unless the caller's config sets it."""

from __future__ import annotations

import torch
import yaml
from torch.utils.data import TensorDataset

from trainyard.config import load_config
from trainyard.engine.api import sets_keep_host_memory


def test_only_a_config_that_names_the_key_sets_it(tmp_path):
    assert load_config(None).trainer.keep_host_memory is True  # the trainyard command's default
    named = tmp_path / "named.yaml"
    named.write_text("trainer: {keep_host_memory: true}\n")
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text("trainer: {epochs: 1}\n")
    for config in (
        {"trainer.keep_host_memory": True},
        {"trainer": {"keep_host_memory": False}},
        ["trainer.keep_host_memory=true"],
        named,
        load_config(None),
    ):
        assert sets_keep_host_memory(config), config
    for config in (None, {"trainer.epochs": 1}, {"trainer": {"epochs": 1}}, ["trainer.epochs=1"], unnamed):
        assert not sets_keep_host_memory(config), config


def test_fit_leaves_the_callers_allocator_alone_by_default(tmp_path):
    import trainyard

    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    base = {"track.root": str(tmp_path), "trainer.epochs": 1, "trainer.progress": False, "track.backends": []}
    result = trainyard.fit(torch.nn.Linear(4, 2), data, config=base, name="lib")
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["trainer"]["keep_host_memory"] is False
    result = trainyard.fit(torch.nn.Linear(4, 2), data, config={**base, "trainer.keep_host_memory": True}, name="asked")
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["trainer"]["keep_host_memory"] is True
