"""Supervised pre-training: backbone weights out, and into detection/segmentation by init."""

import os

import keras
import numpy as np
import pytest

from rethink_tf.models import backbones
from rethink_tf.training import pretraining
from rethink_tf.training import tasks
from rethink_tf.training import trainer
from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order


class _BackboneAtTrainBegin(keras.callbacks.Callback):
    """Records the backbone's weights when training starts (after initialisation)."""

    def __init__(self):
        super().__init__()
        self.weights = None

    def on_train_begin(self, logs=None):
        self.weights = [w.numpy() for w in self.model.backbone.weights]


class _BackboneAtTrainEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = None

    def on_train_end(self, logs=None):
        self.weights = [w.numpy() for w in self.model.backbone.weights]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, digit_scenes_data_dir):
    """A tiny supervised pre-training run: (workdir, metrics, final backbone weights)."""
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    config = tiny_config("classification", digit_scenes_data_dir, steps=3)
    config.train.checkpoint_every = 3
    end = _BackboneAtTrainEnd()
    metrics = pretraining.pretrain(config, workdir, extra_callbacks=[end])
    return workdir, metrics, end.weights


def test_pretrain_writes_backbone_weights_and_top1(pretrained):
    workdir, metrics, _ = pretrained
    assert metrics["step"] == 3 and 0.0 <= metrics["top1"] <= 1.0
    assert os.path.exists(os.path.join(workdir, "backbone.weights.h5"))
    assert os.path.exists(os.path.join(workdir, "backbone.backbone.json"))
    assert metrics["backbone_weights"] == os.path.join(workdir, "backbone.weights.h5")


def test_detector_starts_from_the_pretrained_backbone(pretrained, tmp_path,
                                                      digit_scenes_data_dir):
    """Through trainer.train, at 64 px (pre-trained at 32 px): weights equal the saved ones."""
    workdir, _, saved = pretrained
    config = tiny_config("detection", digit_scenes_data_dir, steps=1)
    assert config.dataset.image_size == 64
    config.init = f"pretrained:{workdir}"
    begin = _BackboneAtTrainBegin()
    trainer.train(config, str(tmp_path / "det"), extra_callbacks=[begin])
    assert len(begin.weights) == len(saved)
    for got, want in zip(begin.weights, saved):
        np.testing.assert_array_equal(got, want)
    # Not trivially equal: a randomly initialised detector has other backbone weights.
    random_det = tasks.build_model(tiny_config("detection", digit_scenes_data_dir), 10)
    assert any(not np.array_equal(w.numpy(), s)
               for w, s in zip(random_det.backbone.weights, saved))


def test_segmenter_loads_the_pretrained_backbone(pretrained, digit_scenes_data_dir):
    workdir, _, saved = pretrained
    config = tiny_config("segmentation", digit_scenes_data_dir)
    config.init = f"pretrained:{workdir}"
    model = tasks.build_model(config, 11)
    assert tasks.initialize(model, config).endswith("backbone.weights.h5")
    for got, want in zip(model.backbone.weights, saved):
        np.testing.assert_array_equal(got.numpy(), want)


def test_mismatched_backbone_gives_a_clear_error(pretrained, tmp_path, digit_scenes_data_dir):
    workdir, _, _ = pretrained
    config = tiny_config("detection", digit_scenes_data_dir, steps=1)
    config.model.backbone = "resnet_small"
    config.init = f"pretrained:{workdir}"
    with pytest.raises(ValueError, match=r"backbone architecture mismatch \(saved "
                                         r"'resnet_tiny' vs target 'resnet_small'\)"):
        trainer.train(config, str(tmp_path / "det"))


def test_rerun_of_a_finished_pretraining_rewrites_the_same_weights(pretrained,
                                                                   digit_scenes_data_dir):
    workdir, _, saved = pretrained
    config = tiny_config("classification", digit_scenes_data_dir, steps=3)
    config.train.checkpoint_every = 3
    os.remove(os.path.join(workdir, "backbone.weights.h5"))
    metrics = pretraining.pretrain(config, workdir)
    assert metrics["step"] == 3
    backbone = backbones.build_backbone("resnet_tiny", input_shape=(32, 32, 3))
    backbones.load_backbone_weights(backbone, metrics["backbone_weights"])
    for got, want in zip(backbone.weights, saved):
        np.testing.assert_array_equal(got.numpy(), want)


def test_linear_probe_of_a_supervised_workdir(pretrained):
    workdir, _, _ = pretrained
    metrics = pretraining.probe_workdir(workdir)
    assert metrics["protocol"] == "linear_probe" and 0.0 <= metrics["top1"] <= 1.0
    assert metrics["num_train"] == 32 and metrics["num_images"] == 8
    assert os.path.exists(os.path.join(workdir, "probe.json"))


def test_supervised_pretraining_needs_a_classification_config(tmp_path,
                                                              digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir)
    with pytest.raises(ValueError, match="config.task: supervised pre-training"):
        pretraining.pretrain(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
