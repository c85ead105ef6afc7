"""metrics.jsonl as the report and the runs table read it: whole rows only, a damaged row skipped, not fatal."""

from __future__ import annotations

import json

from trainyard.track.jsonl import read_metrics
from trainyard.track.rundir import cut_torn_tail


def test_a_row_cut_short_in_the_middle_is_skipped_and_the_rest_read(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "a": 1}\n{"step": 2, "a"{"step": 3, "a": 3}\n[1, 2]\n{"step": 4, "a": 4}\n{"step": 5'
    )
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 4]


def test_cut_torn_tail_keeps_whole_lines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    cut_torn_tail(path)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    cut_torn_tail(path)  # whole already: unchanged
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"half')
    cut_torn_tail(path)
    assert path.read_text() == ""
    cut_torn_tail(tmp_path / "missing.jsonl")  # nothing to cut


def test_a_resume_drops_the_rows_past_its_checkpoint_step(tmp_path):
    from trainyard.track.rundir import cut_rows_after

    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 50, "epoch": 0},
        {"step": 71, "epoch": 0, "val/accuracy": 0.4},
        {"step": 100, "epoch": 1},
        {"step": 142, "epoch": 1, "val/accuracy": 0.5},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cut_rows_after(path, 71)  # killed after logging epoch 1, before its last.pt: the resume starts at step 71
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
    cut_rows_after(path, 71)  # nothing past it: the file is left as it is
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
    cut_rows_after(tmp_path / "missing.jsonl", 0)  # no file yet: nothing to do
