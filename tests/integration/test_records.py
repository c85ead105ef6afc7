"""A run's record on disk stays true: ``best.pt`` is a file of its own, not a name for ``last.pt``'s bytes
(issue 16, case 6), and one run folder whose files cannot be read does not hide the others from
``trainyard runs`` (case 8). Every folder here comes from a real run, copied, then damaged on purpose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import SRC, run_cli

from trainyard.engine.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real run of one epoch: the epoch improved on nothing before it, so best.pt is last.pt's state."""
    root = tmp_path_factory.mktemp("trained") / "runs"
    done = run_cli(
        "train",
        f"track.root={root}",
        "name=good",
        "trainer.epochs=1",
        "trainer.log_every=5",
        "model.width=8",
        "trainer.progress=false",
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return root / "good"


def copy_run(trained: Path, where: Path) -> Path:
    shutil.copytree(trained, where)
    return where


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- case 6: best.pt is independent of last.pt ---------------------------------------------------------


def test_overwriting_last_pt_in_place_leaves_best_pt_as_it_was(trained, tmp_path):
    run = copy_run(trained, tmp_path / "runs" / "good")
    ckpt = run / "checkpoints"
    last, best = ckpt / "last.pt", ckpt / "best.pt"
    assert load_checkpoint(best)["epoch"] == load_checkpoint(last)["epoch"] == 1  # the last epoch was the best
    # the run itself (not the copy) must not have left them as one file: copytree would hide a hard link
    assert (trained / "checkpoints" / "last.pt").stat().st_ino != (trained / "checkpoints" / "best.pt").stat().st_ino
    best_bytes, best_weights = best.read_bytes(), weights(best)

    # a backup restored over last.pt the way cp does it: the existing file opened and written in place
    backup = tmp_path / "backup.pt"
    state = load_checkpoint(last)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    save_checkpoint(backup, {k: v for k, v in state.items() if k != "format"})
    original = run / "checkpoints.orig"
    shutil.copytree(trained / "checkpoints", original)
    if shutil.which("cp"):
        subprocess.run(["cp", str(backup), str(last)], check=True, timeout=30)
    with open(original / "last.pt", "rb") as src, open(last, "r+b") as dst:  # and back, in place again
        dst.write(src.read())
        dst.truncate()
    with open(backup, "rb") as src, open(last, "r+b") as dst:
        dst.write(src.read())
        dst.truncate()
    assert same(weights(last), weights(backup))
    assert best.read_bytes() == best_bytes and same(weights(best), best_weights)

    import trainyard

    model = trainyard.load(run)  # best.pt's weights
    assert same({k: v for k, v in model.state_dict().items() if k in best_weights}, best_weights)

    # a later save of last.pt (a new file renamed over it) does not touch best.pt either
    save_checkpoint(last, {"model": {"w": torch.ones(3)}})
    assert torch.equal(weights(last)["w"], torch.ones(3))
    assert best.read_bytes() == best_bytes
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "last.pt"]


def test_link_checkpoint_gives_an_independent_file(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(last, {"model": {"w": torch.arange(1000.0)}})
    how = link_checkpoint(last, best)
    assert how in ("clone", "copy")  # clone: a copy-on-write file system shared the blocks
    assert last.stat().st_ino != best.stat().st_ino and best.read_bytes() == last.read_bytes()
    with open(last, "r+b") as f:  # damage last.pt in place
        f.write(b"\0" * 64)
    assert torch.equal(weights(best)["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_copy_cut_short_leaves_the_previous_best_whole(tmp_path):
    """A real process whose file-size limit stops the copy of best.pt half way: the old best.pt is whole and
    loads, no temporary file is left. (On a copy-on-write file system the clone writes no data and succeeds.)"""
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(last, {"model": {"w": torch.zeros(4)}})
    link_checkpoint(last, best)
    save_checkpoint(last, {"model": {"w": torch.randn(200_000)}})  # ~800 KB, over the limit below
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        from trainyard.engine.checkpoint import link_checkpoint
        from trainyard.errors import WriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            print(link_checkpoint({str(last)!r}, {str(best)!r}))
        except WriteError as exc:  # one line naming the file (and that a size limit stopped it)
            print("failed", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "clone":
        assert same(weights(best), weights(last))
    else:
        assert done.stdout.startswith("failed"), done.stdout
        assert torch.equal(weights(best)["w"], torch.zeros(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


# --- case 8: one unreadable run does not hide the others ---------------------------------------------


def _binary_config(run: Path) -> None:
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage\x80\x81")


def _bad_yaml(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text + "\n  oops: [unclosed\n: : :\n")


def _cut_status(run: Path) -> None:
    text = (run / "status.json").read_text()
    (run / "status.json").write_text(text[: len(text) // 2])  # a write cut short


def _status_not_object(run: Path) -> None:
    (run / "status.json").write_text("[1, 2, 3]\n")


def _torn_metrics(run: Path) -> None:
    """A row cut short by a kill, and the rows a resume appended after it: a broken line in the middle. The
    status.json of a run stopped before its end holds no final metrics, so the table reads metrics.jsonl."""
    status = json.loads((run / "status.json").read_text())
    status.update(status="interrupted", final=None)
    (run / "status.json").write_text(json.dumps(status))
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    (run / "metrics.jsonl").write_text(lines[0][: len(lines[0]) // 2] + "".join(lines[1:]))


def _binary_metrics(run: Path) -> None:
    _torn_metrics(run)
    (run / "metrics.jsonl").write_bytes(b"\x80\x81\xfe\n" * 3)


DAMAGE = {
    "config.yaml not text": (_binary_config, "config.yaml: not UTF-8 text"),
    "config.yaml not YAML": (_bad_yaml, "config.yaml line"),
    "status.json cut short": (_cut_status, "status.json line"),
    "status.json not an object": (_status_not_object, "status.json: not a JSON object"),
    "metrics.jsonl torn row": (_torn_metrics, "metrics.jsonl line 1: not JSON"),
    "metrics.jsonl not text": (_binary_metrics, "metrics.jsonl: not UTF-8 text"),
}


def table(out: str) -> dict[str, str]:
    """name -> status from the table's rows (after the header and the dashes)."""
    return {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_runs_lists_the_others_and_marks_the_unreadable_one(trained, tmp_path, damage):
    corrupt, reason = DAMAGE[damage]
    root = tmp_path / "runs"
    copy_run(trained, root / "good")
    corrupt(copy_run(trained, root / "bad"))
    done = run_cli("runs", str(root), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert table(done.stdout) == {"good": "finished", "bad": "unreadable"}
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: bad: unreadable: ")]
    assert len(notes) == 1 and reason in notes[0], done.stderr
    assert "good" not in done.stderr
    header = done.stdout.splitlines()[0].split()
    assert not [h for h in header if h.startswith(("model.", "optim.", "data."))]  # the bad run's config differs in nothing


def test_a_sorted_table_keeps_the_unreadable_run(trained, tmp_path):
    root = tmp_path / "runs"
    copy_run(trained, root / "sweep" / "trial-000")
    _binary_config(copy_run(trained, root / "sweep" / "trial-001"))
    done = run_cli("runs", str(root), "--sort", "test/accuracy", "--reverse", timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert table(done.stdout) == {"sweep/trial-000": "finished", "sweep/trial-001": "unreadable"}
    assert list(table(done.stdout)) == ["sweep/trial-000", "sweep/trial-001"]  # no value: last


def test_report_on_an_unreadable_run_is_one_line(trained, tmp_path):
    run = copy_run(trained, tmp_path / "runs" / "bad")
    _torn_metrics(run)
    done = run_cli("report", str(run), "--out", str(tmp_path / "r.html"), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "metrics.jsonl: unreadable (line 1: not JSON" in done.stderr
