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


# train.nonfinite = "skip": a bad batch's update is skipped and the run goes on.

from rethink_tf.training import optimizer as optimizer_lib  # noqa: E402  pylint: disable=g-bad-import-order,wrong-import-position
from rethink_tf.training import tasks  # noqa: E402  pylint: disable=g-bad-import-order,wrong-import-position


def _sgd(skip):
    return optimizer_lib.SGDL2(learning_rate=0.1, momentum=0.9, l2=1e-4, clipnorm_global=1.0,
                               skip_nonfinite=skip)


def test_skip_nonfinite_leaves_weights_and_momentum_and_counts_the_step():
    w = tf.Variable([1.0, -2.0])
    opt = _sgd(skip=True)
    opt.apply([tf.constant([0.5, 0.5])], [w])
    after_one = (w.numpy().copy(), [v.numpy().copy() for v in opt.variables])
    opt.apply([tf.constant([np.nan, 0.5])], [w])
    np.testing.assert_array_equal(w.numpy(), after_one[0])
    for v, before in zip(opt.variables[2:], after_one[1][2:]):  # momenta (not the counters)
        np.testing.assert_array_equal(v.numpy(), before)
    assert int(opt.iterations.numpy()) == 2 and opt.skipped_steps == 1
    opt.apply([tf.constant([np.inf, 0.5])], [w])
    assert opt.skipped_steps == 2
    # A finite step after the skipped ones is exactly the update of a run that never saw them
    # (but for the schedule's step, constant here).
    reference = tf.Variable([1.0, -2.0])
    ref = _sgd(skip=False)
    ref.apply([tf.constant([0.5, 0.5])], [reference])
    ref.apply([tf.constant([0.25, -0.5])], [reference])
    opt.apply([tf.constant([0.25, -0.5])], [w])
    np.testing.assert_allclose(w.numpy(), reference.numpy(), rtol=1e-6)
    # Without the option a NaN gradient reaches the weights (the run then stops on it).
    plain = tf.Variable([1.0, -2.0])
    _sgd(skip=False).apply([tf.constant([np.nan, 0.5])], [plain])
    assert np.isnan(plain.numpy()[0])


def _loss_infinite_at(step):
    """A `Hooks.build_model` whose detector's loss is infinite at optimizer step `step` (0-based):
    a bad batch (a corrupt label, say) whose loss and gradient are not finite while the forward
    pass, and so the batch-norm statistics, are."""
    def build_model(config):
        model = tasks.build_model(config, tasks.num_classes(config))
        compute_loss = model.compute_loss

        def bad_at_step(*args, **kwargs):
            loss = compute_loss(*args, **kwargs)
            bad = tf.equal(model.optimizer.iterations, step)
            # A factor, not tf.where(bad, loss * inf, loss): where's gradient would be NaN at
            # every step (0 * inf in the branch not taken).
            return loss * tf.where(bad, float("inf"), 1.0)
        model.compute_loss = bad_at_step
        return model
    return build_model


def test_skip_mode_skips_a_bad_batch_and_finishes(digit_scenes_data_dir, tmp_path, capsys):
    config = tiny_config("detection", digit_scenes_data_dir, steps=6)
    config.train.nonfinite = "skip"
    metrics = trainer.train(config, str(tmp_path / "run"),
                            hooks=trainer.Hooks(build_model=_loss_infinite_at(2)))
    out = capsys.readouterr().out
    assert "step 3: non-finite gradient, update skipped" in out, out
    assert out.count("update skipped") == 1, out  # only the bad batch's
    assert metrics["step"] == 6 and np.isfinite(metrics["AP"])
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    for name, value in _variables(latest).items():
        assert np.all(np.isfinite(value)), name
    # The same bad batch stops a run in the default mode, naming the step.
    config.train.nonfinite = "stop"
    with pytest.raises(callbacks.NonFiniteLossError, match="training diverged at step 3"):
        trainer.train(config, str(tmp_path / "stop"),
                      hooks=trainer.Hooks(build_model=_loss_infinite_at(2)))


def test_skip_mode_still_stops_a_diverged_run_with_finite_checkpoints(
        digit_scenes_data_dir, tmp_path):
    """Skipping is for a bad batch: a run that diverged (every step non-finite, or batch-norm
    statistics overflowed by the forward pass) still stops, and no NaN reaches a checkpoint."""
    config = tiny_config("detection", digit_scenes_data_dir, steps=40)
    config.train.learning_rate = 1e9
    config.train.warmup_steps = 0
    config.train.clipnorm = 0.0
    config.train.checkpoint_every = 1
    config.train.keep_checkpoints = 50
    config.train.nonfinite = "skip"
    workdir = str(tmp_path / "run")
    with pytest.raises(callbacks.NonFiniteLossError,
                       match=r"training diverged at step \d+: (\d+ steps in a row|non-finite "
                             r"weights)"):
        trainer.train(config, workdir)
    for path in tf.train.get_checkpoint_state(
            os.path.join(workdir, "checkpoints")).all_model_checkpoint_paths:
        for name, value in _variables(path).items():
            assert np.all(np.isfinite(value)), f"{name} is not finite in {path}"
