"""A diverging run stops at the step whose loss is not finite, names it, and leaves the last
finite checkpoint as the latest: no NaN weights are written, and the workdir resumes."""

import os

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.training import callbacks
from rethink_tf.training import checkpoints
from rethink_tf.training import trainer

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order


def _variables(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "model" in name and reader.get_tensor(name).dtype.kind == "f"}


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_finite_checkpoint(
        digit_scenes_data_dir, tmp_path):
    config = tiny_config("detection", digit_scenes_data_dir, steps=40)
    config.train.learning_rate = 1e9  # diverges within a few steps
    config.train.warmup_steps = 0
    config.train.clipnorm = 0.0
    config.train.checkpoint_every = 1
    config.train.keep_checkpoints = 50
    workdir = str(tmp_path / "run")
    with pytest.raises(callbacks.NonFiniteLossError,
                       match=r"training diverged at step (\d+): .*(nan|inf|non-finite weights)"
                       ) as error:
        trainer.train(config, workdir)
    step = int(error.value.args[0].split("step ", 1)[1].split(":")[0])
    assert 1 <= step < 40
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    # Checkpoints up to the step before the divergence, and none of it or after.
    assert checkpoints.step_of(latest) == step - 1, (latest, step)
    assert latest in str(error.value)
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    for name, value in _variables(latest).items():
        assert np.all(np.isfinite(value)), f"{name} is not finite in {latest}"
