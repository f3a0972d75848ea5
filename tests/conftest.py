"""Shared pytest fixtures: the tiny `digit_scenes` datasets, built once per test session."""
import os

# Quiet TensorFlow's C++ logging before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never read the user's ~/tensorflow_datasets: they run as on a clean CI machine.
os.environ["TFDS_DATA_DIR"] = os.path.join(
    os.environ.get("PYTEST_TMPDIR", "/tmp"), f"rethink_tf_tests_tfds_{os.getpid()}")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

# Two logical CPU devices, so MirroredStrategy tests run with 2 replicas on this CPU. This
# must happen before TensorFlow initialises its devices, hence at import of conftest.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.fixture(scope="session")
def digit_scenes_data_dir(tmp_path_factory):
    """Builds the tiny `detection` and `classification` configs; returns the TFDS data dir.

    Load a split with either of
        tfds.load('digit_scenes/detection_tiny', split='train', data_dir=digit_scenes_data_dir)
        tfds.builder('digit_scenes', config=tiny_config('detection'),
                     data_dir=digit_scenes_data_dir).as_dataset(split='train')
    (`from rethink_tf.data.digit_scenes import tiny_config`; 'classification_tiny' likewise).
    Detection splits: train 24, unlabeled 48, validation 16, test 16 scenes; classification:
    train 32, validation 16, test 16 images. The `load_digit_scenes` fixture wraps the first call.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import digit_scenes  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for task in digit_scenes.TASKS:
        tfds.builder("digit_scenes", config=digit_scenes.tiny_config(task),
                     data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def load_digit_scenes(digit_scenes_data_dir):
    """Returns `load(task, split)` -> `tf.data.Dataset` of the tiny `digit_scenes/<task>_tiny`.

    Examples are TFDS feature dicts (not yet canonical), in a fixed order (files not shuffled).
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    def load(task, split):
        return tfds.load(f"digit_scenes/{task}_tiny", split=split,
                         data_dir=digit_scenes_data_dir, shuffle_files=False)

    return load
