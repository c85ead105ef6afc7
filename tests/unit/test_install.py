"""The install's shape: the default job runs on the core dependencies alone, an optional package that is
missing is one line naming its extra, and the test extra brings everything the tests use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainyard.errors import TrainyardError

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = {"sklearn": "sklearn", "tokenizers": "text", "wandb": "wandb"}  # optional module -> its extra
PIP_NAMES = {"sklearn": "scikit-learn"}


def project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    return {Requirement(r).name.lower() for r in requirements}


def test_optional_packages_are_extras_and_the_test_extra_holds_every_one():
    p = project()
    extras = p["optional-dependencies"]
    assert not names(p["dependencies"]) & {"scikit-learn", "tokenizers", "wandb"}
    assert names(extras["text"]) == {"tokenizers"} and names(extras["sklearn"]) == {"scikit-learn"}
    for extra, requirements in extras.items():
        if extra != "test":
            assert names(requirements) <= names(extras["test"]), extra
    assert names(extras["all"]) == set().union(*(names(r) for e, r in extras.items() if e not in ("all", "test")))


def test_the_shipped_digits_are_scikit_learns():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    import numpy as np

    from trainyard.data.vision import load_digits

    images, target = load_digits()
    reference = sklearn_datasets.load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)


BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None  # import of it fails, as if not installed\n"


def test_the_default_job_runs_without_any_extra(tmp_path):
    code = BLOCK.format(names=list(EXTRAS)) + (
        "from trainyard.cli import main\n"
        f"code = main(['train', 'track.root={tmp_path}', 'trainer.epochs=1', 'model.width=8', 'trainer.progress=false'])\n"
        "assert not {'sklearn', 'tokenizers', 'wandb'} & {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize(
    "package, call",
    [
        ("tokenizers", lambda: __import__("trainyard.data.text", fromlist=["x"]).train_tokenizer("basic", ["a b"], 100, 1)),
        ("tokenizers", lambda: __import__("trainyard.data.text", fromlist=["x"]).load_tokenizer(Path("tok.json"))),
        ("sklearn", lambda: __import__("trainyard.data.user", fromlist=["x"]).diabetes(None)),
    ],
)
def test_a_missing_optional_package_is_one_line_naming_its_extra(monkeypatch, package, call):
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TrainyardError) as info:
        call()
    (line,) = str(info.value).splitlines()
    assert line.endswith(f"needs {PIP_NAMES.get(package, package)}; install it with: pip install 'trainyard[{EXTRAS[package]}]'"), line
