"""Config: defaults, YAML, overrides, and one-line errors for bad input."""

from __future__ import annotations

import pytest
import yaml
from conftest import run_cli

from trainyard.cli import main
from trainyard.config import RunConfig, load_config, to_yaml
from trainyard.errors import ConfigError


def test_defaults_are_the_default_job():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.data.dataset == "digits" and cfg.model.name == "cnn" and cfg.parallel.strategy == "single"
    assert cfg.track.backends == ["tensorboard"] and cfg.trainer.log_every == 50


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("name: exp\noptim:\n  lr: 0.05\n  name: sgd\nloader:\n  batch_size: 16\n")
    cfg = load_config(f, ["optim.lr=1e-3", "track.backends=[tensorboard, wandb]", "trainer.clip_grad_norm=1", "parallel.devices=[0, 1]"])
    assert cfg.name == "exp" and cfg.optim.name == "sgd" and cfg.loader.batch_size == 16
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; the float field takes it
    assert cfg.track.backends == ["tensorboard", "wandb"]
    assert cfg.trainer.clip_grad_norm == 1.0 and isinstance(cfg.trainer.clip_grad_norm, float)
    assert cfg.parallel.devices == [0, 1]


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=0.2", "trainer.precision=bf16", "loader.num_workers=auto"])
    f = tmp_path / "again.yaml"
    f.write_text(to_yaml(cfg))
    assert load_config(f) == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean optim.lr?"),
        ("optimm.lr=0.1", "did you mean optim.lr?"),
        ("optim.lr=-1", "optim.lr=-1: must be > 0"),
        ("loader.batch_size=0", "loader.batch_size=0: must be >= 1"),
        ("loader.batch_size=abc", "loader.batch_size=abc: expected an integer"),
        ("trainer.epochs=2.5", "trainer.epochs=2.5: expected an integer"),
        ("trainer.precision=16", "allowed values are 32, bf16, fp16"),
        ("loader.num_workers=-1", "loader.num_workers=-1: must be >= 0"),
        ("loader.num_workers=many", "expected an integer or 'auto'"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5: must be < 1"),
        ("trainer.deterministic=yes please", "trainer.deterministic=yes please: expected true/false"),
        ("optim", "expected key.sub=value"),
    ],
)
def test_bad_values_raise_one_line(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.name=adamm", "optim.name=adamm: unknown optimizer; built-ins: sgd, adam, adamw, any torch.optim class"),
        ("optim.name=RMSpro", "did you mean RMSprop"),
        ("schedule.name=OneCycle", "did you mean OneCycleLR"),
        ("parallel.strategy=ddpp", "parallel.strategy=ddpp: unknown strategy; built-ins: single, dp, ddp, model, pipeline"),
        ("task=regresion", "task.name=regresion: unknown task; built-ins: classification, binary, multilabel, regression"),
        ("task.loss=MSEloss", "task.loss=MSEloss: unknown loss"),
        ("task.metrics=[F1Scor]", "unknown metric 'F1Scor'"),
        ("model.name=resnet19", "did you mean resnet18"),
        ("data.dataset=digit", "did you mean digits"),
        (
            "model.name=no_such_module_here:Net",
            "model.name=no_such_module_here:Net: cannot import no_such_module_here (ModuleNotFoundError",
        ),
        ("model.name=torch.nn:Linearr", "model.name=torch.nn:Linearr: torch.nn has no 'Linearr'; did you mean Linear"),
        ("callbacks=[torch.nn:Linear]", "callbacks[0]=torch.nn:Linear: Linear has none of the hooks"),
    ],
)
def test_bad_names_fail_before_anything_runs(override, expected):
    """Names and import paths are resolved (the user's modules imported) when a run starts, before any process or file."""
    from trainyard.engine.run import check_names

    with pytest.raises(ConfigError) as err:
        check_names(load_config(None, [override]))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_section_shorthand_and_overrides_after_it():
    cfg = load_config(None, ["task=regression", "task.loss=SmoothL1Loss", "optim=sgd"])
    assert (cfg.task.name, cfg.task.loss, cfg.optim.name) == ("regression", "SmoothL1Loss", "sgd")


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(f)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "optim.lr=-1"], "trainyard: error: optim.lr=-1: must be > 0"),
        (["train", "optim.lrr=0.1"], "did you mean optim.lr?"),
        (["train", "loader.batch_size=0"], "loader.batch_size=0: must be >= 1"),
        (["train", "missing.yaml"], "config file missing.yaml: not found"),
        (["config", "optim.lr=1", "stray"], "argument 'stray': expected key.sub=value"),
        (["train", "trainer.device=cuda"], "trainer.device=cuda: CUDA is not available"),
        (["train", "track.backends=[tensorbord]"], "unknown backend 'tensorbord'; allowed"),
        (["train", "data.dataset=digitz"], "data.dataset=digitz: unknown dataset"),
        (["train", "model.name=cnnn"], "did you mean cnn?"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, expected):
    if args == ["train", "trainer.device=cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    code = main([*args, f"track.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*/config.yaml")), "a bad config must not leave a run folder behind"


def test_real_entry_point_exits_2_without_traceback(tmp_path):
    proc = run_cli("train", "optim.lr=-1", f"track.root={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "trainyard: error: optim.lr=-1: must be > 0"


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "optim.lr=0.5", "name=x"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["optim"]["lr"] == 0.5 and data["name"] == "x" and data["model"]["name"] == "cnn"
