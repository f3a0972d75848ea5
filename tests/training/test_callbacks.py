"""Console output: a live bar on a terminal, one line per interval in logs; the metrics files."""

import io
import json
import os

import pytest

from rethink_tf.data import atomic
from rethink_tf.training import callbacks


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("verbose,terminal,expected", [
    (0, True, (0, False)), (0, False, (0, False)),
    (1, True, (1, False)),   # a live Keras bar
    (1, False, (0, True)),   # a log file: lines with step/total, images/s, ETA
    (2, True, (0, True)), (2, False, (0, True)),
])
def test_console_mode(verbose, terminal, expected):
    stream = _Terminal() if terminal else io.StringIO()
    assert callbacks.console_mode(verbose, stream) == expected


def _history_steps(workdir):
    with open(os.path.join(workdir, "metrics_history.jsonl")) as f:
        return [(r["step"], r["split"], r["AP"]) for r in map(json.loads, f)]


def test_metrics_history_one_record_per_step_and_a_cut_line_dropped(tmp_path):
    workdir = str(tmp_path)
    callbacks.write_metrics(workdir, 2, {"AP": 0.1}, "validation")
    # A line cut by a kill under the old appending writer, then a resumed run that evaluates
    # step 4 twice (once before the kill, once after resuming from the step-2 checkpoint).
    with open(os.path.join(workdir, "metrics_history.jsonl"), "a") as f:
        f.write('{"step": 4, "split": "validation", "AP": 0.2}\n{"step": 6, "spl')
    callbacks.write_metrics(workdir, 4, {"AP": 0.25}, "validation")
    callbacks.write_metrics(workdir, 4, {"AP": 0.3}, "test")
    assert _history_steps(workdir) == [(2, "validation", 0.1), (4, "validation", 0.25),
                                       (4, "test", 0.3)]
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f) == {"step": 4, "split": "test", "AP": 0.3}
    assert [r["step"] for r in callbacks.read_metrics_history(workdir)] == [2, 4, 4]


def test_metrics_history_failed_write_keeps_the_previous_files(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    callbacks.write_metrics(workdir, 2, {"AP": 0.1}, "validation")
    before = {name: open(os.path.join(workdir, name)).read()
              for name in ("metrics.json", "metrics_history.jsonl")}

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(atomic.WriteError, match="metrics history"):
        callbacks.write_metrics(workdir, 4, {"AP": 0.2}, "validation")
    monkeypatch.undo()
    after = {name: open(os.path.join(workdir, name)).read() for name in before}
    assert after == before
    assert sorted(os.listdir(workdir)) == ["metrics.json", "metrics_history.jsonl"]
