"""Supervised training: smoke runs per task, resume, distribution equivalence, bad configs."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rethink_tf.training import checkpoints
from rethink_tf.training import config as config_lib
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import strategy as strategy_lib
from rethink_tf.training import tasks
from rethink_tf.training import trainer

import distributed_step  # tests/distributed_step.py  # pylint: disable=g-bad-import-order

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")


def tiny_config(task, data_dir, dataset=None, steps=2):
    c = config_lib.base_config(task)
    c.dataset.name = dataset or {"detection": "digit_scenes/detection_tiny",
                                 "segmentation": "digit_scenes/detection_tiny",
                                 "classification": "digit_scenes/classification_tiny"}[task]
    c.dataset.data_dir = data_dir
    c.dataset.image_size = 64
    c.dataset.shuffle_buffer = 16
    c.model.backbone = "resnet_tiny"
    c.model.anchor_sizes = (16.0, 32.0, 64.0)
    c.model.fpn_filters = 8
    c.model.head_filters = 8
    c.model.head_depth = 1
    c.train.steps = steps
    c.train.batch_size = 4
    c.train.warmup_steps = 1
    c.train.checkpoint_every = 2
    c.train.eval_every = 0
    c.train.log_every = 1
    c.train.verbose = 0
    c.eval.batch_size = 8
    c.eval.num_images = 8
    c.eval.tb_images = 2
    if task == "classification":
        c.dataset.image_size = 32
    return c


def _tb_tags(workdir):
    tags = set()
    for path in glob.glob(os.path.join(workdir, "tb", "*", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


@pytest.mark.parametrize("task,dataset,metric,mock", [
    ("detection", "coco/2017", "AP50", True),
    ("classification", "imagenet2012", "top1", True),
    # TFDS mock masks are uniform noise in 0..255 (not class ids), so segmentation runs on the
    # real tiny digit_scenes instead.
    ("segmentation", "digit_scenes/detection_tiny", "mIoU", False),
])
def test_one_step_train_and_evaluate(task, dataset, metric, mock, tmp_path,
                                     digit_scenes_data_dir):
    config = tiny_config(task, digit_scenes_data_dir, dataset=dataset, steps=1)
    config.train.checkpoint_every = 1
    if dataset == "coco/2017":
        config.dataset.max_boxes = 20
    if mock:
        with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
            metrics = trainer.train(config, str(tmp_path))
    else:
        metrics = trainer.train(config, str(tmp_path))
    assert metrics["step"] == 1 and metric in metrics
    assert 0.0 <= metrics[metric] <= 1.0 or metrics[metric] == -1.0
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["step"] == 1
    assert (tmp_path / "config.json").exists()
    tags = _tb_tags(str(tmp_path))
    assert "learning_rate" in tags and "throughput/images_per_s" in tags
    assert f"eval/{metric}" in tags and "loss/total" in tags


def test_detection_logs_every_loss_term_and_prediction_images(tmp_path, digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir)
    trainer.train(config, str(tmp_path))
    tags = _tb_tags(str(tmp_path))
    assert {"loss/box_loss", "loss/classification_loss", "eval/predictions"} <= tags


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash after `at_step` optimiser steps."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.at_step:
            raise KeyboardInterrupt("simulated interruption")


class _StepRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(int(self.model.optimizer.iterations.numpy()))


def test_interrupted_run_resumes_at_the_saved_step(tmp_path, digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir, steps=6)
    workdir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, workdir, extra_callbacks=[_Interrupt(at_step=3)])
    saved = glob.glob(f"{workdir}/checkpoints/ckpt-*.index")
    assert sorted(checkpoints.step_of(p[:-len(".index")]) for p in saved) == [2]
    recorder = _StepRecorder()
    metrics = trainer.train(config, workdir, extra_callbacks=[recorder])
    # The resumed run continues after the checkpoint at step 2 and ends at step 6.
    assert recorder.steps == [3, 4, 5, 6]
    assert metrics["step"] == 6
    reference = _StepRecorder()
    ref_metrics = trainer.train(config, str(tmp_path / "ref"), extra_callbacks=[reference])
    assert reference.steps == [1, 2, 3, 4, 5, 6] and ref_metrics["step"] == 6
    # Running a finished run again does no training.
    again = _StepRecorder()
    trainer.train(config, workdir, extra_callbacks=[again])
    assert again.steps == []


def test_resume_restores_optimizer_state(tmp_path, digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir, steps=2)
    workdir = str(tmp_path)
    trainer.train(config, workdir)
    run = trainer.Run(config, workdir)
    run.checkpoints.restore_latest()
    assert run.step == 2
    momenta = [v for v in run.optimizer.variables if "momentum" in v.path]
    assert momenta and any(np.abs(v.numpy()).sum() > 0 for v in momenta)


@pytest.mark.parametrize("config_file", sorted(
    f for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_")))
def test_every_experiment_config_loads_and_validates(config_file, digit_scenes_data_dir):
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
        "cfg", os.path.join(CONFIG_DIR, config_file)).get_config()
    # Point at the tiny prepared data; everything else as written.
    config.dataset.name = config.dataset.name.replace("digit_scenes/detection",
                                                      "digit_scenes/detection_tiny").replace(
        "digit_scenes/classification", "digit_scenes/classification_tiny")
    config.dataset.data_dir = digit_scenes_data_dir
    if config.self_training.get("pseudo_labels"):
        config.self_training.pseudo_labels = digit_scenes_data_dir
    config_lib.validate(config)
    # The config resolves to a dataset with the labels its task needs.
    assert tasks.num_classes(config) > 0
    assert config.train.steps > 0 and config.augment in config_lib.POLICIES


@pytest.mark.parametrize("field,value,message", [
    ("model.backbone", "resnet9000", "config.model.backbone: unknown backbone 'resnet9000'"),
    ("dataset.name", "no_such_dataset", "config.dataset.name: cannot open 'no_such_dataset'"),
    ("dataset.fraction", 0.0, r"config.dataset.fraction: 0.0 is not in \(0, 1\]"),
    ("dataset.fraction", 1.5, r"config.dataset.fraction: 1.5 is not in \(0, 1\]"),
    ("augment", "s9", "config.augment: 's9' is not one of"),
    ("init", "pretrained:/no/such/dir", "config.init: '/no/such/dir' does not exist"),
    ("dataset.eval_split", "nope", "config.dataset.eval_split: split 'nope' not in"),
])
def test_bad_config_fails_before_any_work(field, value, message, tmp_path,
                                          digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir)
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        trainer.train(config, str(workdir))
    assert not workdir.exists(), "nothing may be written for a bad config"


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_distributed_step_matches_single_device(task, digit_scenes_data_dir):
    """One step on 2 logical CPUs (MirroredStrategy) equals one step on one device.

    Same global batch of 4 (2 per replica), same initial weights. Losses are normalised
    globally (positive anchors / pixels summed over replicas) and batch norm is synchronised,
    so only float32 summation order differs: tolerance 1e-4 relative on losses, 1e-4 absolute
    on weights after one SGD step.
    """
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest configures 2 logical CPU devices"
    config = tiny_config(task, digit_scenes_data_dir)
    config.train.weight_decay = 0.0
    config.train.warmup_steps = 0
    config.train.learning_rate = 0.01
    info = tasks.dataset_info(config)
    batch = next(iter(tasks.train_dataset(config, info, 4)))

    def build():
        model = tasks.build_model(config, tasks.num_classes(config, info))
        tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
        return model

    def step(model):
        history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        return {"loss": history.history["loss"][0]}

    results = distributed_step.one_step_per_strategy(
        (tf.distribute.get_strategy(), strategy_lib.cpu_mirrored_strategy(2)), build, step,
        prepare=lambda model: model(batch[0][:1]))
    distributed_step.assert_steps_match(results, ["loss"])
