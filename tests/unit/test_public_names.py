"""No private name of torch, torchvision or tensorboard anywhere in src/: what a release may rename or drop
without notice breaks only where a test says so.

A name is private when it starts with one underscore (``torch._C``, ``from torch.utils.data import _utils``);
dunders (``torch.__version__``) are public. Attribute chains are followed from every name bound to one of these
packages by an import; on any other object (a tensor, a module, a writer) the attributes below are flagged by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOTS = ("torch", "torchvision", "tensorboard")

# Private attributes of torch objects that code reaches on instances, where the receiver's type is unknown to a parser.
PRIVATE_ATTRIBUTES = {
    "_version",
    "_base",
    "_cdata",
    "_grad_fn",
    "_typed_storage",
    "_untyped_storage",
    "_local_tensor",  # tensors
    "_modules",
    "_parameters",
    "_buffers",
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",  # nn.Module
    "_non_persistent_buffers_set",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_get_file_writer",
    "all_writers",  # SummaryWriter's internals (all_writers: no underscore, no documentation)
    "_C",
    "_dynamo",
    "_inductor",
    "_utils",
    "_jit_pass_inline",
    "_log_api_usage_once",
    "_pytorch_graph",
    "_proto_graph",
}

# (path under src/, line's private name): why it stays for now. Each entry names one hit in a file this change
# does not own; the test fails when an entry no longer matches, so a fixed hit takes its entry with it.
ALLOWED: dict[tuple[str, str], str] = {}


def private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def ours(module: str) -> bool:
    return module.split(".")[0] in ROOTS


def dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None when the chain does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def is_attr_call(node: ast.AST) -> bool:
    """``getattr(x, "name")`` and its kin, with the name a string constant."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def private_names(source: str) -> list[tuple[int, str, str]]:
    """Each private name reached in ``source``: (line, the name, the expression it was reached by)."""
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> the module path (or module attribute) it stands for
    found: dict[tuple[int, str], str] = {}

    def hit(node: ast.AST, name: str, where: str) -> None:
        found.setdefault((node.lineno, name), where)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if ours(alias.name):
                    for part in alias.name.split("."):
                        if private(part):
                            hit(node, part, f"import {alias.name}")
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and ours(node.module):
            for part in node.module.split("."):
                if private(part):
                    hit(node, part, f"from {node.module} import ...")
            for alias in node.names:
                if private(alias.name):
                    hit(node, alias.name, f"from {node.module} import {alias.name}")
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = dotted(node)
            if chain is not None and chain[0] in bound:
                full = bound[chain[0]].split(".") + chain[1:]
                for part in full:
                    if private(part):
                        hit(node, part, ".".join(full))
                        break
            if node.attr in PRIVATE_ATTRIBUTES:
                hit(node, node.attr, ast.unparse(node))
        elif is_attr_call(node):
            name, chain = node.args[1].value, dotted(node.args[0])
            if name in PRIVATE_ATTRIBUTES or (private(name) and chain is not None and chain[0] in bound):
                hit(node, name, ast.unparse(node))
    return sorted((line, name, where) for (line, name), where in found.items())


def src_hits() -> dict[tuple[str, str], list[str]]:
    hits: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for line, name, where in private_names(path.read_text(encoding="utf-8")):
            hits.setdefault((rel, name), []).append(f"src/{rel}:{line}: {where}")
    return hits


def test_src_reaches_no_private_torch_torchvision_or_tensorboard_name():
    hits = src_hits()
    new = [where for key, places in hits.items() if key not in ALLOWED for where in places]
    assert not new, "private names of torch, torchvision or tensorboard in src/ (use a public API):\n" + "\n".join(new)
    stale = [f"{path}: {name}" for path, name in ALLOWED if (path, name) not in hits]
    assert not stale, "allowlist entries whose hit is gone (remove them from ALLOWED):\n" + "\n".join(stale)


@pytest.mark.parametrize(
    "source",
    [
        "import torch._dynamo",
        "import torch._C as C",
        "from torch._C import Graph",
        "from torch.utils.data import _utils",
        "from torch.utils.tensorboard._pytorch_graph import parse",
        "import torch\ntorch._C._jit_pass_inline(g)",
        "import torch.nn.functional as F\nF._in_projection(x)",
        "from torch import distributed as dist\ndist._functional_collectives",
        "import torchvision\ntorchvision._is_tracing()",
        "from tensorboard.compat.proto import event_pb2\nevent_pb2._EVENT",
        "v = tensor._version",
        "writer._get_file_writer().add_event(e)",
        "m._modules['fc']",
        "getattr(t, '_version')",
        "import torch\ngetattr(torch, '_foreach_add')",
    ],
)
def test_the_check_finds_private_names(source):
    assert private_names(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.__version__",
        "import torch.nn.functional as F\nF.cross_entropy(x, y)",
        "from torch.utils.data import DataLoader",
        "import numpy as np\nnp._core",  # only torch, torchvision and tensorboard are checked
        "self._held = []",
        "from trainyard.track import _private",
        "getattr(obj, '__name__', '')",
    ],
)
def test_the_check_lets_public_names_pass(source):
    assert not private_names(source), source
