"""atomic_write: the file is replaced whole or not at all, with no temporary file left behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from trainyard.files import atomic_write


def test_text_and_bytes_replace_the_file_whole(tmp_path):
    path = tmp_path / "status.json"
    atomic_write(path, "first")
    atomic_write(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and EFBIG as Linux applies them")
def test_a_write_past_a_file_size_limit_is_one_line_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: {width: 8}\n")
    child = textwrap.dedent(f"""
        import resource, signal
        from trainyard.errors import WriteError
        from trainyard.files import atomic_write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            atomic_write({str(path)!r}, "x" * 5000)
        except WriteError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"cannot write {path}: File too large" in out.stdout and "ulimit -f" in out.stdout
    assert path.read_text() == "model: {width: 8}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
