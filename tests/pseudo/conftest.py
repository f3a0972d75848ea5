"""Fixtures: tiny detection and segmentation teacher workdirs (built, not trained)."""

import keras
import numpy as np
import pytest

from rethink_tf.training import checkpoints
from rethink_tf.training import config as config_lib
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import tasks

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

IMAGE_SIZE = 64
UNLABELED = "digit_scenes/detection_tiny"  # its `unlabeled` split: 48 scenes with hidden truth
NUM_UNLABELED = 48


def teacher_config(task, data_dir):
    c = tiny_config(task, data_dir, dataset=UNLABELED)
    c.dataset.image_size = IMAGE_SIZE
    return c


def make_workdir(workdir, task, data_dir, step=3):
    """config.json + a best checkpoint of a randomly initialised tiny model.

    The detector's class head gets random weights with a spread of scores (instead of the
    focal prior's 0.01), so that thresholds between 0.3 and 0.9 keep some boxes and drop
    others and the tests are not vacuous.
    """
    config = teacher_config(task, data_dir)
    config_lib.save(config, str(workdir))
    keras.utils.set_random_seed(0)
    model = tasks.build_model(config, tasks.num_classes(config))
    rng = np.random.RandomState(0)
    if task == "detection":
        head = model.classification_head
        for layer in head.hidden + [head.prediction]:
            kernel, bias = layer.get_weights()
            last = layer is head.prediction
            layer.set_weights([rng.normal(0.0, 0.5 if last else 0.1, kernel.shape).astype(
                np.float32), np.full(bias.shape, -2.0 if last else 0.0, np.float32)])
    else:
        layer = model.get_layer("segmentation_head").get_layer("segmentation_output")
        kernel, bias = layer.get_weights()
        # Confident and unconfident pixels both occur (pixel thresholds bite).
        layer.set_weights([rng.normal(0.0, 20.0, kernel.shape).astype(np.float32), bias])
    optimizer = optimizer_lib.build_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    manager = checkpoints.CheckpointManager(str(workdir), model=model, optimizer=optimizer)
    manager.save(step)
    manager.maybe_save_best(step, "AP" if task == "detection" else "mIoU", 0.5)
    return str(workdir)


@pytest.fixture(scope="session")
def detection_teacher_dir(tmp_path_factory, digit_scenes_data_dir):
    return make_workdir(tmp_path_factory.mktemp("det_teacher"), "detection",
                        digit_scenes_data_dir)


@pytest.fixture(scope="session")
def segmentation_teacher_dir(tmp_path_factory, digit_scenes_data_dir):
    return make_workdir(tmp_path_factory.mktemp("seg_teacher"), "segmentation",
                        digit_scenes_data_dir)
