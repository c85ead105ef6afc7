"""The real TensorBoard server, on the loopback interface, over a runs folder."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from trainyard.errors import TrainyardError
from trainyard.parallel.launch import free_port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "data/environment", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_tensorboard(logdir: Path, port: int = 0, host: str = "127.0.0.1", timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Start ``tensorboard --logdir LOGDIR`` and return (process, URL) once it answers HTTP.
    ``port=0`` picks a free port (and tries another if that one is taken in between)."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise TrainyardError(f"runs folder {logdir} not found")
    if importlib.util.find_spec("tensorboard") is None:
        raise TrainyardError("trainyard board needs the tensorboard package; install it with: pip install tensorboard")
    attempts = 3 if port == 0 else 1
    log = tempfile.TemporaryFile(mode="w+")
    for _ in range(attempts):
        chosen = port or free_port()
        url = f"http://{host}:{chosen}/"
        cmd = [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            host,
            "--port",
            str(chosen),
            "--reload_interval",
            "5",
        ]
        log.seek(0)
        log.truncate()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if _ready(url):
                return proc, url
            time.sleep(0.3)
        if proc.poll() is None:
            stop(proc)
            raise TrainyardError(f"tensorboard did not answer on {url} within {timeout:.0f}s")
        log.seek(0)
        output = log.read()
        if "already in use" not in output and "Address already" not in output:
            break
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
    raise TrainyardError(f"tensorboard exited (code {proc.returncode}) on port {chosen}: {tail}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
