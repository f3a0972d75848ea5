"""kill -9 (SIGKILL, no callback, no cleanup) of the real commands, then the same command again.

Each case runs the user's command (`python -m rethink_tf.train` / `rethink_tf.pretrain`) with
`config.deterministic`, kills it with SIGKILL when its console output reaches a point (mid-step,
around a checkpoint write, in the final evaluation), runs the same command again, and checks
that the result equals an uninterrupted run's: the same final weights, the same metrics, and a
latest checkpoint that restores. Pseudo-labelling's kill is in
`tests/pseudo/test_labeler.py::test_killed_run_rerun_equals_uninterrupted_and_machines_agree`;
`experiments/faults/run.py` kills at random points, many times, at larger sizes.
"""

import os

import numpy as np
import pytest

from faults_helpers import killed_then_rerun  # tests/faults/  # pylint: disable=g-bad-import-order
from faults_helpers import procs  # pylint: disable=g-bad-import-order
from faults_helpers import run_command  # pylint: disable=g-bad-import-order

import tensorflow as tf  # pylint: disable=g-bad-import-order

TRAIN_STEPS = 6


def _train_command(data_dir, workdir):
    return procs.train_command(data_dir, workdir, TRAIN_STEPS)


def _assert_same_run(reference, workdir):
    assert procs.training_differences(reference, workdir) == []
    # The best checkpoint restores too (the one evaluation and export read).
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints", "best"))


@pytest.fixture(scope="module")
def reference_train(tmp_path_factory, digit_scenes_data_dir):
    workdir = str(tmp_path_factory.mktemp("kill") / "reference")
    run_command(_train_command(digit_scenes_data_dir, workdir))
    return workdir


# (trigger line, seconds after it): where the kill lands.
TRAIN_KILL_POINTS = {
    # Step 3 printed: step 4 is running; the latest checkpoint is step 2's.
    "mid_step": (f"step 3/{TRAIN_STEPS} ", 0.0),
    # Step 4 printed: the step-4 checkpoint is being written (or just was).
    "checkpoint_write": (f"step 4/{TRAIN_STEPS} ", 0.0),
    # The last step printed, plus a moment: the final save and evaluation.
    "final_evaluation": (f"step {TRAIN_STEPS}/{TRAIN_STEPS} ", 1.5),
}


# The default run kills around a checkpoint write (the point where a torn write would lose
# work); the other points, and pretrain's kill, run with `-m slow` (CI time: README "Test").
DEFAULT_RUN_POINT = "checkpoint_write"


@pytest.mark.parametrize("point", [
    p if p == DEFAULT_RUN_POINT else pytest.param(p, marks=pytest.mark.slow)
    for p in sorted(TRAIN_KILL_POINTS)])
def test_train_killed_then_rerun_equals_uninterrupted(point, reference_train, tmp_path,
                                                      digit_scenes_data_dir):
    workdir = str(tmp_path / "killed")
    command = _train_command(digit_scenes_data_dir, workdir)
    trigger, delay = TRAIN_KILL_POINTS[point]
    output = killed_then_rerun(command, trigger, delay)
    # The rerun resumed from a checkpoint (it did not start over) unless the kill came before
    # the first one.
    assert "Resuming from" in output, output[-2000:]
    _assert_same_run(reference_train, workdir)


def _pretrain_command(data_dir, workdir):
    return procs.pretrain_command(data_dir, workdir, 6)


@pytest.mark.slow  # the same loop (trainer.train) as train's kill above; CI time
def test_pretrain_killed_mid_step_then_rerun_writes_the_uninterrupted_backbone(
        tmp_path, digit_scenes_data_dir):
    reference = str(tmp_path / "reference")
    run_command(_pretrain_command(digit_scenes_data_dir, reference))
    workdir = str(tmp_path / "killed")
    output = killed_then_rerun(_pretrain_command(digit_scenes_data_dir, workdir), "step 3/6 ",
                               0.0)
    assert "Resuming from" in output, output[-2000:]
    assert procs.metrics(workdir) == procs.metrics(reference)
    import h5py  # pylint: disable=g-import-not-at-top
    with h5py.File(os.path.join(reference, "backbone.weights.h5")) as a, \
            h5py.File(os.path.join(workdir, "backbone.weights.h5")) as b:
        names = []
        a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
        assert names
        for name in names:
            np.testing.assert_array_equal(b[name][()], a[name][()], err_msg=name)
