"""Every model variable reaches TF checkpoints, so a restore gives back the trained model."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.models import segmenter as segmenter_lib
from rethink_tf.models import tracking
from rethink_tf.training import checkpoints
from rethink_tf.training import tasks

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order


def _tiny_model(task, backbone="resnet_tiny", drop_path_rate=0.1):
    c = tiny_config(task)
    c.model.backbone = backbone
    c.model.drop_path_rate = drop_path_rate
    c.dataset.image_size = 64
    return tasks.build_model(c, 3)


@pytest.mark.parametrize("task", ["detection", "segmentation", "classification"])
def test_checkpoint_reaches_every_variable(task):
    model = _tiny_model(task)
    assert tracking.untracked_variables(tf.train.Checkpoint(model=model), model.variables) == []


def test_segmenter_round_trip_restores_aspp_statistics(tmp_path):
    # Keras-CV's ASPP keeps its branches in a list: before tracking, their batch-norm moving
    # statistics were not saved, and a restored DeepLabV3+ predicted differently.
    def build():
        return segmenter_lib.build_segmenter("resnet_tiny", 3, 64, aspp_filters=8,
                                             projection_filters=8, head_filters=8)

    keras.utils.set_random_seed(1)
    model = build()
    rng = np.random.RandomState(0)
    for v in model.variables:  # every variable, moving statistics included, gets a new value
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))
    path = tf.train.Checkpoint(model=model).save(os.path.join(tmp_path, "ckpt"))
    keras.utils.set_random_seed(2)
    restored = build()
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    aspp = [v.path for v in model.variables
            if "moving_mean" in v.path and "spatial_pyramid" in v.path]
    assert aspp, "the ASPP should have batch-norm statistics"
    for a, b in zip(model.variables, restored.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(model(images, training=False), restored(images, training=False),
                               rtol=1e-5, atol=1e-5)


class _ListHolder(keras.layers.Layer):
    """Holds sub-layers in a list, the pattern TF checkpoints do not follow."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.branches = [keras.layers.BatchNormalization() for _ in range(2)]

    def build(self, input_shape):
        for b in self.branches:
            b.build(input_shape)

    def call(self, x):
        return self.branches[0](x) + self.branches[1](x)


def _list_holder_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, _ListHolder()(inputs))


def test_checkpoint_manager_refuses_a_model_it_cannot_save(tmp_path):
    model = _list_holder_model()
    with pytest.raises(ValueError,
                       match=r"8 variable\(s\) would not be saved.*track_sublayer_lists"):
        checkpoints.CheckpointManager(str(tmp_path), model=model)
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "checkpoint"))


def test_track_sublayer_lists_fixes_the_model_with_stable_names(tmp_path):
    model = _list_holder_model()
    assert tracking.track_sublayer_lists(model) == 2
    assert tracking.track_sublayer_lists(model) == 0  # idempotent
    checkpoints.CheckpointManager(str(tmp_path), model=model)  # no error now
    path = tf.train.Checkpoint(model=model).save(os.path.join(tmp_path, "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert any("_ckpt_branches_1/moving_mean" in n for n in names), names


def test_restoring_a_checkpoint_that_lacks_variables_fails_clearly(tmp_path):
    # A checkpoint written before the sub-layers were tracked holds none of their values.
    old = tf.train.Checkpoint(model=_list_holder_model()).save(os.path.join(tmp_path, "old"))
    model = _list_holder_model()
    tracking.track_sublayer_lists(model)
    manager = checkpoints.CheckpointManager(str(tmp_path / "run"), model=model)
    with pytest.raises(ValueError, match="does not hold every variable of this model"):
        manager.restore(old)
