"""Two machines' sweep commands sharing one study on a real PostgreSQL server, which the test starts itself
(``initdb`` and ``pg_ctl`` on a free port in a temporary folder). Each command keeps its own trials' run
folders (a track.root of its own), as two machines without a shared file system would; the study holds
every result, so each prints the whole table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import free_port

FAST = [
    "trainer.log_every=5",
    "model.width=8",
    "trainer.progress=false",
    "data.train_transforms=[]",
    "track.images=false",
    "track.graph=false",
    "trainer.histogram_every=0",
    "data.max_samples=600",
    "trainer.epochs=2",
]


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as ``nobody``."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    return [runuser, "-u", "nobody", "--", *command]


@pytest.fixture(scope="module")
def postgres_url():
    missing = [tool for tool in ("initdb", "pg_ctl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PostgreSQL is not installed here ({', '.join(missing)} not on PATH; .ci/run installs it where apt-get can)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver (pip install psycopg2-binary, in the test extra)")
    home = Path(tempfile.mkdtemp(prefix="trainyard-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, user="nobody")
    data, port = home / "data", free_port()
    init = subprocess.run(
        _as_server_user([shutil.which("initdb"), "-D", str(data), "-U", "trainyard", "--auth=trust", "-E", "UTF8"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr[-2000:]
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    start = subprocess.run(
        _as_server_user(
            [shutil.which("pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-o", options, "-w", "-t", "60", "start"]
        ),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert start.returncode == 0, (
        start.stderr[-2000:],
        (home / "server.log").read_text()[-2000:] if (home / "server.log").exists() else "",
    )
    try:
        yield f"postgresql://trainyard:unused-password@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_server_user([shutil.which("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, timeout=60
        )
        shutil.rmtree(home, ignore_errors=True)


def _rows(stdout: str) -> dict[str, str]:
    """name -> status of the last table printed."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("----"))
    out = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if not cells or not cells[0].startswith("trial-"):
            break
        out[cells[0]] = cells[1]
    return out


@pytest.mark.timeout(420)
def test_two_sweep_commands_share_one_study_on_postgresql(postgres_url, tmp_path):
    names = [f"trial-{i:03d}" for i in range(4)]
    axes = ["optim.lr=0.01,0.003", "model.width=4,8"]
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainyard",
                "sweep",
                f"track.root={tmp_path / machine}",
                *FAST,
                *axes,
                "--name",
                "shared",
                "--storage",
                postgres_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for machine in ("a", "b")
    ]
    results = [job.communicate(timeout=400) for job in jobs]
    for job, (out, err) in zip(jobs, results):
        assert job.returncode == 0, err[-3000:]
        assert "unused-password" not in out + err
        assert sorted(_rows(out)) == names and set(_rows(out).values()) == {"finished"}  # the whole study, whoever trained it
    here = {m: sorted(p.name for p in (tmp_path / m / "shared").glob("trial-*")) for m in ("a", "b")}
    assert sorted(here["a"] + here["b"]) == names  # every trial trained once, by one of the two
    started = [n for out, _ in results for n in names if f"== {n} " in out]
    assert sorted(started) == names

    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 4
