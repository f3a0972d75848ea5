"""Training follows the dataset's flip rule: digit_scenes streams never mirror, `dataset.hflip`
forces it, and flip TTA is rejected where a mirror changes the labels."""

import numpy as np
import pytest

from rethink_tf.training import config as config_lib
from rethink_tf.training import tasks

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

COUNT = 24  # one epoch of the tiny detection train split


def _images(config):
    info = tasks.dataset_info(config)
    stream = tasks.train_examples(config, info)
    return [e["images"].numpy() for e in stream.take(COUNT)]


def test_hflip_setting_follows_the_source_unless_forced():
    c = tiny_config("detection")
    assert config_lib.hflip(c) is False  # digit_scenes
    assert config_lib.hflip(c, "images:/data/*.jpg") is True
    assert config_lib.hflip(c, "coco/2017") is True
    c.dataset.hflip = "on"
    assert config_lib.hflip(c) is True
    c.dataset.hflip = "off"
    assert config_lib.hflip(c, "coco/2017") is False
    del c.dataset["hflip"]  # a config saved before the field existed
    assert config_lib.hflip(c) is False


def test_bad_hflip_value_is_rejected_naming_the_field(digit_scenes_data_dir):
    c = tiny_config("detection", digit_scenes_data_dir)
    c.dataset.hflip = "yes"
    with pytest.raises(ValueError, match=r"dataset\.hflip.*'yes'"):
        config_lib.validate(c)


def test_digit_scene_training_stream_never_mirrors(digit_scenes_data_dir):
    """`auto` on digit_scenes gives exactly the `off` stream; `on` mirrors some examples and
    leaves the rest byte-for-byte as they are (only the flip differs)."""
    c = tiny_config("detection", digit_scenes_data_dir)
    auto = _images(c)
    c.dataset.hflip = "off"
    off = _images(c)
    c.dataset.hflip = "on"
    on = _images(c)
    for a, b in zip(auto, off):
        np.testing.assert_array_equal(a, b)
    same = sum(np.array_equal(a, b) for a, b in zip(auto, on))
    assert 0 < same < COUNT, same  # the flip's coin: about half are mirrored


def test_flip_tta_on_digits_is_rejected_before_any_work(digit_scenes_data_dir):
    c = tiny_config("detection", digit_scenes_data_dir)
    c.self_training.flip_tta = True
    with pytest.raises(ValueError, match=r"self_training\.flip_tta.*digit_scenes"):
        config_lib.validate(c)
    c.dataset.hflip = "on"  # forced: the user's call
    c.self_training.unlabeled = "images:/nowhere/*.jpg"
    c.self_training.unlabeled_split = "all"
    config_lib.validate(c)
