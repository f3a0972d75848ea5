"""`python experiments/faults/run.py`, as BUILD.md and RESULTS.md show it, at a tiny size."""

import json
import os

import pytest

from faults_helpers import procs  # tests/faults/  # pylint: disable=g-bad-import-order


@pytest.mark.slow  # kill-and-resume is tests/faults/test_kill.py's in the default run; CI time
def test_fault_runner_kills_and_checks_a_training_run(tmp_path, digit_scenes_data_dir):
    root = tmp_path / "faults"
    returncode, output = procs.run(
        ["experiments/faults/run.py", f"--root={root}", f"--data_dir={digit_scenes_data_dir}",
         "--kills=1", "--steps=4", "--parts=train"], timeout=900)
    assert returncode == 0, output[-4000:]
    with open(root / "results.json") as f:
        results = json.load(f)
    (trial,) = results["trials"]["train"]
    assert trial["passed"] and not trial["problems"], trial
    assert trial["kills"] and all("at_s" in k for k in trial["kills"])
    assert os.path.exists(os.path.join(results["references"]["train"]["dir"], "metrics.json"))
    assert "| train | 1 |" in output and "1 / 1" in output
    # Run again: the finished trial is not rerun.
    returncode, again = procs.run(
        ["experiments/faults/run.py", f"--root={root}", f"--data_dir={digit_scenes_data_dir}",
         "--kills=1", "--steps=4", "--parts=train"], timeout=900)
    assert returncode == 0 and "[train 1/1]" not in again, again[-3000:]


def test_fault_runner_rejects_an_unknown_part(tmp_path, digit_scenes_data_dir):
    returncode, output = procs.run(
        ["experiments/faults/run.py", f"--root={tmp_path}", f"--data_dir={digit_scenes_data_dir}",
         "--parts=train,disk"])
    assert returncode != 0 and "unknown part 'disk'" in output
