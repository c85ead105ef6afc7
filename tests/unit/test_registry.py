"""The registry every family shares: built-in names, import paths from the working directory, closest-name
hints, and call_with (the user's args as given, the data's facts only where the signature names them)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainyard.data import DATASETS
from trainyard.engine.callbacks import CALLBACKS, FirstBatchPictures
from trainyard.engine.optim import OPTIMIZERS, SCHEDULES
from trainyard.errors import ConfigError
from trainyard.models import MODELS
from trainyard.registry import Registry, call_with, closest, hint, import_object, is_import_path, qualified_name, signature_text
from trainyard.tasks import TASKS
from trainyard.tasks.regression import Regression

# --- built-in names ------------------------------------------------------------------------------


def test_built_in_names_resolve_to_their_objects():
    from trainyard.models.small import mlp
    from trainyard.tasks.classification import Multilabel

    assert MODELS.get("mlp") is mlp
    assert {"cnn", "mlp", "transformer"} <= set(MODELS.names())
    assert {"digits", "diabetes", "text"} <= set(DATASETS)
    assert TASKS.get("regression") is Regression and TASKS.get("multilabel") is Multilabel
    assert CALLBACKS.get("first_batch_pictures") is FirstBatchPictures
    assert TASKS.help("regression")  # each built-in carries its one-line help


def test_torch_names_are_a_fallback_with_their_own_names():
    assert OPTIMIZERS.get("RMSprop") is torch.optim.RMSprop
    assert SCHEDULES.get("StepLR") is torch.optim.lr_scheduler.StepLR
    assert SCHEDULES.get("ReduceLROnPlateau") is torch.optim.lr_scheduler.ReduceLROnPlateau
    assert "Adagrad" in OPTIMIZERS.known() and "Optimizer" not in OPTIMIZERS.known()  # the base class is no choice


def test_a_registry_is_a_mapping_and_passes_objects_through():
    reg = Registry("widget", "widget.name")
    reg["dumps"] = "json:dumps"  # as a plugin adds an entry: imported when used
    reg.register("loads", json.loads, "the object itself")
    assert reg.get("dumps") is json.dumps and reg.get("loads") is json.loads
    assert list(reg) == ["dumps", "loads"] and len(reg) == 2 and reg["dumps"] == "json:dumps"
    marker = object()
    assert reg.get(marker) is marker  # the Python API passes objects, not names
    del reg["dumps"]
    assert reg.names() == ["loads"]


def test_an_unknown_name_lists_the_built_ins_and_the_closest():
    with pytest.raises(ConfigError) as info:
        MODELS.get("mlpp")
    message = str(info.value)
    assert message.startswith("model.name=mlpp: unknown model; built-ins: cnn, mlp,")
    assert "import path package.module:name" in message and message.endswith("did you mean mlp?")
    with pytest.raises(ConfigError, match=r"optim.name=RMSProp: unknown optimizer.*any torch.optim class.*did you mean RMSprop"):
        OPTIMIZERS.get("RMSProp")
    with pytest.raises(ConfigError, match=r"custom.key=zzz: unknown widget"):  # the key errors name can be the caller's
        Registry("widget", "widget.name").get("zzz", key="custom.key")


# --- import paths ----------------------------------------------------------------------------------


@pytest.fixture
def cwd_module(tmp_path, monkeypatch):
    """A module in a fresh working directory that is not on sys.path: found the way ``python -m`` finds it."""
    name = "trainyard_cwd_module_for_tests"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
        class Outer:
            class Inner:
                pass

        def build(size=3):
            return list(range(size))
    """),
        encoding="utf-8",
    )
    (tmp_path / "trainyard_raises_on_import.py").write_text("raise ValueError('bad setting\\nsecond line')\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    for mod in (name, "trainyard_raises_on_import"):
        sys.modules.pop(mod, None)


def test_import_paths_are_found_from_the_working_directory(cwd_module):
    build = import_object(f"{cwd_module}:build", "data.dataset")
    assert build() == [0, 1, 2]
    assert import_object(f"{cwd_module}:Outer.Inner", "model.name").__qualname__ == "Outer.Inner"  # a dotted attribute
    assert MODELS.get(f"{cwd_module}:build") is build  # any family takes an import path


def test_import_errors_name_the_key_the_module_and_the_first_line(cwd_module):
    with pytest.raises(ConfigError) as info:
        import_object("no_such_module_anywhere:Net", "model.name")
    message = str(info.value)
    assert message.startswith(
        "model.name=no_such_module_anywhere:Net: cannot import no_such_module_anywhere (ModuleNotFoundError: No module named"
    )
    assert f"working directory ({Path.cwd()})" in message and "PYTHONPATH" in message
    with pytest.raises(ConfigError) as info:
        import_object("trainyard_raises_on_import:Net", "model.name")
    assert "(ValueError: bad setting)" in str(info.value) and "second line" not in str(info.value)
    with pytest.raises(ConfigError, match=rf"data.dataset={cwd_module}:buld: {cwd_module} has no 'buld'; did you mean build\?"):
        import_object(f"{cwd_module}:buld", "data.dataset")
    with pytest.raises(ConfigError, match=r"has no 'Innr'; did you mean Inner\?"):
        import_object(f"{cwd_module}:Outer.Innr", "model.name")
    with pytest.raises(ConfigError, match="not an import path; expected package.module:name"):
        import_object("mlp", "model.name")


def test_is_import_path_and_qualified_name():
    assert is_import_path("pkg.mod:Net") and is_import_path("mod:Outer.inner")
    for spec in ("mlp", ":Net", "mod:", 3, None):
        assert not is_import_path(spec)

    def local():
        pass

    assert qualified_name(Regression) == "trainyard.tasks.regression:Regression"
    assert qualified_name(lambda: 0) is None and qualified_name(local) is None  # nothing another process could import


def test_closest_names_and_hints():
    assert closest("MSELos", ["MSELoss", "L1Loss", "HuberLoss"]) == ["MSELoss"]
    assert closest("mseloss", ["MSELoss", "Softmax"]) == ["MSELoss"]  # the case-insensitive second try
    assert hint("on_epoch_ends", ["on_epoch_end", "on_run_end"]).startswith("; did you mean on_epoch_end")
    assert hint("zzzz", ["MSELoss"]) == ""


# --- call_with -------------------------------------------------------------------------------------


def net(depth, width=8, num_classes=None, in_channels=1):
    return {"depth": depth, "width": width, "num_classes": num_classes, "in_channels": in_channels}


def test_call_with_passes_facts_only_where_the_signature_names_them():
    facts = {"num_classes": 10, "in_channels": 3, "vocab_size": 500, "image_size": None}
    assert call_with(net, "model.args", {"depth": 2}, facts) == {"depth": 2, "width": 8, "num_classes": 10, "in_channels": 3}

    def few(depth, **kwargs):
        return kwargs

    assert call_with(few, "model.args", {"depth": 1, "extra": True}, facts) == {"extra": True}  # **kwargs takes args, never facts

    def sized(image_size=(8, 8)):
        return image_size

    assert call_with(sized, "model.args", {}, facts) == (8, 8)  # a fact the data does not have (None) leaves the default


def test_call_with_args_win_over_facts():
    assert call_with(net, "model.args", {"depth": 1, "num_classes": 4}, {"num_classes": 10})["num_classes"] == 4


def test_call_with_unknown_and_missing_arguments_are_one_line():
    with pytest.raises(ConfigError) as info:
        call_with(net, "model.args", {"depth": 1, "widht": 4})
    assert (
        str(info.value) == "model.args: net(depth, width=8, num_classes=None, in_channels=1) takes no argument 'widht'; did you mean width?"
    )
    with pytest.raises(ConfigError) as info:
        call_with(net, "model.name=mod:net", {}, {"num_classes": 10, "vocab_size": None})
    assert (
        str(info.value)
        == "model.name=mod:net: net(depth, width=8, num_classes=None, in_channels=1) needs 'depth': set it in the args (the data gives "
        "num_classes)"
    )

    def two(a, b):
        return a, b

    with pytest.raises(ConfigError, match=r"needs 'a', 'b': set it in the args \(the data gives nothing\)"):
        call_with(two, "k", {})


def test_call_with_positional_arguments_come_first():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = call_with(
        torch.optim.SGD, "optim.args", {"momentum": 0.9}, {"lr": 0.1, "weight_decay": 0.0, "total_steps": 100}, positional=(params,)
    )
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 0.0)
    sched = call_with(
        torch.optim.lr_scheduler.StepLR, "schedule.args", {"step_size": 2}, {"total_steps": 100, "T_max": 5}, positional=(opt,)
    )
    assert sched.step_size == 2


def test_call_with_leaves_the_factorys_own_type_errors_alone():
    def broken(x=1):
        raise TypeError("unsupported operand type(s) inside the user's code")

    with pytest.raises(TypeError, match="inside the user's code"):  # a bug in the user's code is not reported as a config error
        call_with(broken, "model.args", {"x": 2})


def test_signature_text():
    assert signature_text(net) == "net(depth, width=8, num_classes=None, in_channels=1)"
    assert signature_text(len).startswith("len")
