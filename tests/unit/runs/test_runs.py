"""Tracking beyond one run: sweeps, the runs table, compare, report, and the real TensorBoard server.

One small sweep (three trials on digits) is trained once for the module; every test reads it back.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

LRS = ["0.01", "0.003", "0.001"]
TINY = ["trainer.epochs=2", "trainer.log_every=5", "model.width=8", "trainer.progress=false"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking") / "runs"
    res = run_cli("sweep", f"track.root={root}", *TINY, f"optim.lr={','.join(LRS)}", "--name", "s")
    assert res.returncode == 0, res.stderr
    return root / "s", res.stdout


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The last table printed (a header line, a dashes line, rows) as dicts, cut at the dashes' columns."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("----"))
    spans = [m.span() for m in re.finditer(r"-+", lines[start])]
    headers = lines[start - 1].split()
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or len(line) < spans[-1][0]:
            break
        rows.append({h: line[a:b].strip() for h, (a, b) in zip(headers, spans)})
    return rows


def cli(capsys, *args: str):
    """``trainyard ARGS`` in this process (faster than a subprocess): (exit code, stdout, stderr)."""
    from trainyard.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sweep_trials(folder: Path) -> list[dict]:
    """Each trial of a sweep as its Optuna study holds it (name, overrides, status)."""
    from trainyard.runs.sweep import Sweep

    return Sweep.load(folder).trials


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


# --- sweeps ---------------------------------------------------------------------------------


def test_sweep_trains_every_trial_and_prints_the_best_first(sweep):
    folder, stdout = sweep
    trials = sweep_trials(folder)
    assert [t["overrides"] for t in trials] == [[f"optim.lr={lr}"] for lr in LRS]
    assert all(t["status"] == "finished" for t in trials)

    best = {f"trial-{i:03d}": status(folder / f"trial-{i:03d}")["best"] for i in range(3)}
    rows = table_rows(stdout)
    assert [r["name"] for r in rows] == sorted(best, key=best.get, reverse=True)  # val/accuracy: higher is better
    for r in rows:
        assert float(r["best/val/accuracy"]) == pytest.approx(best[r["name"]], abs=1e-4)
        assert r["optim.lr"] == LRS[int(r["name"][-3:])]


def test_sweep_validates_every_trial_before_training(tmp_path, capsys):
    code, _, err = cli(capsys, "sweep", f"track.root={tmp_path}", "optim.lr=0.1,-1")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("trainyard: error: optim.lr=-1") and "must be > 0" in line
    assert not any(tmp_path.iterdir())


def test_random_sweep_samples_distinct_trials_reproducibly():
    from trainyard.runs.sweep import parse_sweep_args, plan_trials

    fixed, axes = parse_sweep_args(
        ["trainer.epochs=1", "optim.lr=0.1,0.01,0.001", "loader.batch_size=16,32,64", "track.backends=[tensorboard,wandb]"]
    )
    assert fixed == ["trainer.epochs=1", "track.backends=[tensorboard,wandb]"]
    trials = plan_trials(axes, 4, seed=3)
    assert len(trials) == 4 and len({tuple(t) for t in trials}) == 4
    assert trials == plan_trials(axes, 4, seed=3) != plan_trials(axes, 4, seed=4)
    drawn = plan_trials({"optim.lr": ["loguniform(1e-4,1e-1)"]}, 20, seed=0)
    assert all(1e-4 <= float(t[0].split("=")[1]) <= 1e-1 for t in drawn)


@pytest.mark.timeout(240)
def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    root = tmp_path / "runs"
    args = ["sweep", f"track.root={root}", *TINY, "trainer.epochs=3", "optim.lr=0.01,0.003,0.001", "--name", "s"]
    proc = subprocess.Popen([sys.executable, "-m", "trainyard", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:  # Ctrl-C once trial-001 has its first checkpoint
        if (root / "s" / "trial-001" / "checkpoints" / "last.pt").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "trainyard sweep --resume" in err
    states = [t["status"] for t in sweep_trials(root / "s")]
    stopped = states.index("interrupted")
    assert states[:stopped] == ["finished"] * stopped and states[stopped + 1 :] == ["pending"] * (2 - stopped)
    first_started = status(root / "s" / "trial-000")["started"]

    res = run_cli("sweep", "--resume", str(root / "s"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("== trial-") == 3 - stopped  # finished trials are not trained again
    assert all(t["status"] == "finished" for t in sweep_trials(root / "s"))
    assert status(root / "s" / "trial-000")["started"] == first_started
    trial_dirs = sorted(p.name for p in (root / "s").iterdir() if p.is_dir() and not p.name.startswith("."))  # none renamed, none added
    assert trial_dirs == ["trial-000", "trial-001", "trial-002"]
    interrupted = root / "s" / f"trial-{stopped:03d}"

    def last_step(run_dir):
        return max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())

    assert status(interrupted)["status"] == "finished" and last_step(interrupted) == last_step(root / "s" / "trial-000")


# --- the TensorBoard server -------------------------------------------------------------------


def get_json(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.timeout(180)
def test_board_serves_every_trials_scalars_and_hparams_over_http(sweep, port):
    folder, _ = sweep
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainyard", "board", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line + proc.stderr.read()
        url = f"http://127.0.0.1:{port}/"
        tags = get_json(url + "data/plugin/scalars/tags")
        for trial in ("trial-000", "trial-001", "trial-002"):
            assert {"train/loss", "val/accuracy", "test/accuracy", "best/val/accuracy"} <= set(tags[trial])
            assert "epoch/loss" in tags[f"{trial}/epoch_loss_train"]

        experiment = get_json(url + "data/plugin/hparams/experiment", {"experimentName": ""})
        assert "optim.lr" in {h["name"] for h in experiment["hparamInfos"]}
        assert "test/accuracy" in {m["name"]["tag"] for m in experiment["metricInfos"]}
        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "optim.lr"}, {"metric": {"tag": "best/val/accuracy"}}],
            "startIndex": 0,
            "sliceSize": 100,
        }
        groups = get_json(url + "data/plugin/hparams/session_groups", request)["sessionGroups"]
        lrs = {g["name"]: g["hparams"]["optim.lr"] for g in groups}
        assert lrs == pytest.approx({f"trial-{i:03d}": float(lr) for i, lr in enumerate(LRS)})
        for g in groups:  # the hparams plugin shows each trial's best value, as the sweep summary does
            (metric,) = [m for m in g["metricValues"] if m["name"]["tag"] == "best/val/accuracy"]
            assert metric["value"] == pytest.approx(status(folder / g["name"])["best"], abs=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with pytest.raises(OSError):  # the tensorboard server went down with the command
        urllib.request.urlopen(f"http://127.0.0.1:{port}/data/environment", timeout=5)


def test_board_on_a_missing_folder_is_one_line(tmp_path, capsys):
    code, _, err = cli(capsys, "board", tmp_path / "nope")
    assert code == 2
    assert err.strip() == f"trainyard: error: runs folder {tmp_path / 'nope'} not found"


# --- the runs table ---------------------------------------------------------------------------


def test_runs_table_shows_status_differing_hparams_and_metrics_sorted_by_any_column(sweep, capsys):
    folder, _ = sweep
    code, out, err = cli(capsys, "runs", folder, "--sort", "optim.lr")
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:5] == ["name", "status", "started", "duration", "optim.lr"]
    assert "trainer.epochs" not in header and "best/val/accuracy" in header and "test/accuracy" in header
    rows = table_rows(out)
    assert [r["optim.lr"] for r in rows] == ["0.001", "0.003", "0.01"]
    assert {r["status"] for r in rows} == {"finished"}
    for r in rows:
        assert float(r["test/accuracy"]) == pytest.approx(status(folder / r["name"])["final"]["test/accuracy"], abs=1e-4)

    code, out, _ = cli(capsys, "runs", folder, "--sort", "test/accuracy", "--reverse")
    accs = [float(r["test/accuracy"]) for r in table_rows(out)]
    assert accs == sorted(accs, reverse=True)

    code, _, err = cli(capsys, "runs", folder, "--sort", "test/acuracy")
    assert code == 2 and "did you mean test/accuracy" in err and len(err.strip().splitlines()) == 1


def test_a_run_whose_process_died_shows_as_interrupted_or_failed(sweep, tmp_path, capsys):
    folder, _ = sweep
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "runs"
    for name in ("resumable", "lost"):
        shutil.copytree(folder / "trial-000", root / name)
        s = status(root / name)
        s.update(status="running", final=None, duration_s=None)
        s["environment"]["pid"] = dead.pid
        (root / name / "status.json").write_text(json.dumps(s))
    (root / "lost" / "checkpoints" / "last.pt").unlink()
    _, out, _ = cli(capsys, "runs", root)
    assert {r["name"]: r["status"] for r in table_rows(out)} == {"lost": "failed", "resumable": "interrupted"}


# --- compare and report -----------------------------------------------------------------------


def decode_png(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_compare_writes_overlaid_curves_as_png(sweep, tmp_path, capsys):
    folder, _ = sweep
    out = tmp_path / "curves.png"
    code, _, err = cli(capsys, "compare", *(folder / f"trial-{i:03d}" for i in range(3)), "--metric", "val/accuracy", "--out", out)
    assert code == 0, err
    image = decode_png(out.read_bytes()).convert("RGB")
    assert image.size[0] > 400 and image.size[1] > 300
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # axes, three coloured curves, legend text: not a blank canvas

    code, _, err = cli(capsys, "compare", folder / "trial-000", "--metric", "val/acc", "--out", tmp_path / "x.png")
    assert code == 2 and "did you mean val/accuracy" in err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    folder, _ = sweep
    out = tmp_path_factory.mktemp("report") / "report.html"
    from trainyard.cli import main

    assert main(["report", str(folder / "trial-001"), "--out", str(out)]) == 0
    return out


def test_report_is_one_self_contained_file_with_curves_pictures_config_and_environment(report, sweep):
    folder, _ = sweep
    text = report.read_text()
    # Learning curves as inline SVG, with their tags as text.
    svg = text[text.index("<svg") : text.index("</svg>")]
    for tag in ("train/loss", "val/loss", "val/accuracy"):
        assert f">{tag}<" in svg
    # Confusion matrix and sample predictions as embedded PNGs that decode.
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text)
    names = [alt for alt, _ in images]
    assert "Confusion matrix" in names and "Sample predictions" in names
    for _, data in images:
        assert decode_png(base64.b64decode(data)).size[0] > 50
    # The config and environment.
    assert "lr: 0.003" in text and "epochs: 2" in text
    s = status(folder / "trial-001")
    assert s["environment"]["torch"] in text and s["strategy"] in text and "wall time" in text
    assert f"{s['final']['test/accuracy']:.4g}" in text
    # Nothing to fetch: no external scripts, styles, images or fonts.
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)
    assert "<link" not in text and "<script" not in text and "@import" not in text


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.timeout(120)
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    image = decode_png(shot.read_bytes()).convert("L")
    histogram = image.histogram()
    assert max(histogram) < 0.98 * sum(histogram), "the rendered report is blank"
    assert sum(histogram[:128]) > 0.002 * sum(histogram)  # dark pixels: text, axes, curves
