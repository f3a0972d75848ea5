"""Supervised training: smoke runs per task, resume, distribution equivalence, bad configs."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rethink_tf.evaluation import evaluator
from rethink_tf.training import checkpoints
from rethink_tf.training import config as config_lib
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import strategy as strategy_lib
from rethink_tf.training import tasks
from rethink_tf.training import trainer

import distributed_step  # tests/distributed_step.py  # pylint: disable=g-bad-import-order
from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order




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


def _final_weights(config, workdir):
    run = trainer.Run(config, workdir)
    run.checkpoints.restore(run.checkpoints.latest_checkpoint)
    return run.model.get_weights()


def _without_timing(metrics):
    return {k: v for k, v in metrics.items() if k != "images_per_s"}


def _deterministic_config(task, data_dir):
    config = tiny_config(task, data_dir, steps=4)
    config.deterministic = True
    # Strongest augmentation and stochastic depth, so every random source is exercised.
    config.augment = "s4"
    config.model.drop_path_rate = 0.2
    return config


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_deterministic_run_resumed_ends_where_the_uninterrupted_one_does(
        task, tmp_path, digit_scenes_data_dir):
    """With config.deterministic, a run interrupted after its checkpoint at step 2 and resumed
    ends with the weights and metrics of the uninterrupted one: it sees the same batches (no
    replay of the first ones) and the same stochastic-depth draws."""
    config = _deterministic_config(task, digit_scenes_data_dir)
    first = trainer.train(config, str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, str(tmp_path / "c"), extra_callbacks=[_Interrupt(at_step=3)])
    resumed = trainer.train(config, str(tmp_path / "c"))
    assert _without_timing(resumed) == _without_timing(first)
    for a, c in zip(_final_weights(config, str(tmp_path / "a")),
                    _final_weights(config, str(tmp_path / "c"))):
        np.testing.assert_array_equal(a, c)


def test_anchor_targets_encoded_in_the_pipeline_train_as_in_the_step(tmp_path,
                                                                    digit_scenes_data_dir):
    """`train.encode_targets=pipeline` (tf.data encodes the anchor targets, the step only
    reads them) ends with the weights and metrics of the default in-step encoding."""
    config = _deterministic_config("detection", digit_scenes_data_dir)
    step = trainer.train(config, str(tmp_path / "step"))
    config.train.encode_targets = "pipeline"
    pipeline = trainer.train(config, str(tmp_path / "pipeline"))
    for key, value in _without_timing(step).items():
        if isinstance(value, float):
            assert pipeline[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for a, b in zip(_final_weights(config, str(tmp_path / "step")),
                    _final_weights(config, str(tmp_path / "pipeline"))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    config.train.encode_targets = "tf.data"
    with pytest.raises(ValueError, match="train.encode_targets"):
        config_lib.validate(config)


def test_anchor_targets_encoded_in_the_pipeline_under_mirrored_strategy(tmp_path,
                                                                        digit_scenes_data_dir):
    """On 2 logical CPUs each replica's batch carries its own anchor targets: the run ends
    with the weights of the in-step encoding under the same strategy."""
    config = tiny_config("detection", digit_scenes_data_dir, steps=2)
    config.strategy = "mirrored"
    trainer.train(config, str(tmp_path / "step"))
    config.train.encode_targets = "pipeline"
    trainer.train(config, str(tmp_path / "pipeline"))
    for a, b in zip(_final_weights(config, str(tmp_path / "step")),
                    _final_weights(config, str(tmp_path / "pipeline"))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_deterministic_command_twice_gives_identical_results(tmp_path, digit_scenes_data_dir):
    """`python -m rethink_tf.train ... --config.deterministic=True` run twice: identical
    metrics.json (but for the measured speed) and identical final weights."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    overrides = [
        f"--config.dataset.name=digit_scenes/detection_tiny",
        f"--config.dataset.data_dir={digit_scenes_data_dir}", "--config.dataset.image_size=64",
        "--config.dataset.shuffle_buffer=16", "--config.model.backbone=resnet_tiny",
        "--config.model.drop_path_rate=0.2", "--config.augment=s4", "--config.train.steps=3",
        "--config.train.batch_size=4", "--config.train.warmup_steps=1",
        "--config.train.checkpoint_every=3", "--config.train.verbose=0",
        "--config.eval.num_images=8", "--config.eval.batch_size=8",
        "--config.deterministic=True"]
    results = []
    for name in ("first", "second"):
        workdir = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "rethink_tf.train",
             "--config=experiments/configs/segmentation.py", f"--workdir={workdir}",
             *overrides], cwd=root, capture_output=True, text=True, timeout=600,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.load(open(workdir / "metrics.json"))
        reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
        # Every saved value: model weights (some reach the checkpoint through the optimizer's
        # variable list), optimizer state, step.
        weights = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                   if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}
        results.append((_without_timing(metrics), weights))
    (m1, w1), (m2, w2) = results
    assert m1 == m2 and m1["step"] == 3
    assert w1.keys() == w2.keys() and len(w1) > 100
    for key in w1:
        np.testing.assert_array_equal(w1[key], w2[key], err_msg=key)


class _OptimizerSnapshot(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        # By position: paths carry the optimizer's auto-numbered name.
        self.values = [(v.name, v.numpy().copy()) for v in self.model.optimizer.variables]


def test_resume_restores_optimizer_state(tmp_path, digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir, steps=2)
    workdir = str(tmp_path)
    snapshot = _OptimizerSnapshot()
    trainer.train(config, workdir, extra_callbacks=[snapshot])
    run = trainer.Run(config, workdir)
    run.checkpoints.restore_latest()
    assert run.step == 2
    restored = [(v.name, v.numpy()) for v in run.optimizer.variables]
    assert [name for name, _ in restored] == [name for name, _ in snapshot.values]
    momenta = [value for name, value in snapshot.values if "momentum" in name]
    assert momenta and any(np.abs(m).sum() > 0 for m in momenta)
    for (name, value), (_, saved) in zip(restored, snapshot.values):
        np.testing.assert_array_equal(value, saved, err_msg=name)


def test_recorded_metric_is_the_final_checkpoints(tmp_path, digit_scenes_data_dir):
    """metrics.json holds the evaluation of the saved final weights: a fresh model restored
    from the checkpoint and evaluated independently gives the same numbers."""
    from rethink_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
    config = tiny_config("detection", digit_scenes_data_dir, steps=2)
    config.model.eval_score_threshold = 0.0  # an untrained detector: keep every detection
    metrics = trainer.train(config, str(tmp_path))
    run = trainer.Run(config, str(tmp_path))
    run.checkpoints.restore(run.checkpoints.latest_checkpoint)
    independent, _ = evaluator.evaluate(
        run.model, tasks.eval_dataset(config), "detection", run.num_classes,
        num_images=config.eval.num_images,
        **trainer.evaluation_inputs(config, run.info, config.dataset.eval_split))
    assert metrics["AP50"] > 0.0, "an untrained detector with threshold 0 still finds some"
    for key in ("AP", "AP50", "AR100"):
        assert metrics[key] == pytest.approx(independent[key], abs=1e-9), key


def test_rejected_resume_leaves_the_workdir_as_it_was(tmp_path, digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir, steps=2)
    workdir = tmp_path / "run"
    trainer.train(config, str(workdir))
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    other = config.copy_and_resolve_references()
    other.model.backbone = "resnet_small"  # not the checkpoint's architecture
    other.train.steps = 4
    with pytest.raises(ValueError, match="config.model.backbone: 'resnet_small' differs from "
                                         "'resnet_tiny' in .*config.json"):
        trainer.train(other, str(workdir))
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("field,value,message", [
    ("model.backbone", "resnet9000", "config.model.backbone: unknown backbone 'resnet9000'"),
    ("dataset.name", "no_such_dataset", "config.dataset.name: cannot open 'no_such_dataset'"),
    ("dataset.fraction", 0.0, r"config.dataset.fraction: 0.0 is not in \(0, 1\]"),
    ("dataset.fraction", 1.5, r"config.dataset.fraction: 1.5 is not in \(0, 1\]"),
    ("augment", "s9", "config.augment: 's9' is not one of"),
    ("init", "pretrained:/no/such/dir", "config.init: '/no/such/dir' does not exist"),
    ("dataset.eval_split", "nope", "config.dataset.eval_split: split 'nope' not in"),
    ("dataset.image_size", 0, "config.dataset.image_size: must be >= 1, got 0"),
    ("dataset.image_size", 48, "config.dataset.image_size: 48 must be divisible by"),
    ("model.anchor_sizes", (16.0, 32.0), "config.model.anchor_sizes: needs 3 positive sizes"),
    ("model.head_filters", 0, "config.model.head_filters: must be >= 1"),
    ("model.drop_path_rate", 1.0, "config.model.drop_path_rate: must be < 1.0"),
    ("train.momentum", 1.5, "config.train.momentum: must be < 1.0"),
    ("train.steps", True, "config.train.steps: must be an integer"),
    ("train.weight_decay", -1e-4, "config.train.weight_decay: must be >= 0.0"),
    ("train.step_boundaries", (0.9, 0.5), "config.train.step_boundaries: must be increasing"),
    ("train.verbose", 3, "config.train.verbose: 3 is not one of"),
    ("eval.batch_size", 0, "config.eval.batch_size: must be >= 1"),
    ("eval.annotation_file", "/no/such.json", "config.eval.annotation_file: '/no/such.json'"),
    ("seed", -1, "config.seed: must be >= 0"),
    # Checked although this run is not a student:
    ("self_training.ratio", -1.0, "config.self_training.ratio: must be > 0.0, got -1.0"),
    ("self_training.ratio", 0.3, r"config.self_training.ratio: 0.3 x train.batch_size 4 = 1.2"),
    ("self_training.decay", 1.0, "config.self_training.decay: must be < 1.0"),
    ("self_training.score_threshold", 2.0, "config.self_training.score_threshold: must be <="),
    ("self_training.pseudo_labels", "/tmp", "config.self_training.student: is false but"),
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


def test_student_config_without_pseudo_labels_fails_before_any_work(tmp_path,
                                                                   digit_scenes_data_dir):
    """`detection.py:student --config.self_training.ratio=-1` trained supervised for minutes
    and exited 0; now a student config without pseudo labels fails at once, naming them."""
    config = tiny_config("detection", digit_scenes_data_dir)
    config.self_training.student = True
    config.self_training.ratio = -1.0
    with pytest.raises(ValueError, match="config.self_training.pseudo_labels: this is a student"):
        config_lib.validate(config)
    with pytest.raises(ValueError, match="config.self_training"):
        trainer.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task,weight_decay,clipnorm", [
    ("detection", 0.0, 10.0), ("segmentation", 0.0, 10.0),
    # L2 on and a bound the one-step gradient exceeds (its norm is ~1-10 here): clipping of
    # the global gradient and the L2 term keep the equivalence.
    ("detection", 1e-2, 0.05)])
def test_distributed_step_matches_single_device(task, weight_decay, clipnorm,
                                                digit_scenes_data_dir):
    """One step on 2 logical CPUs (MirroredStrategy) equals one step on one device.

    Same global batch of 4 (2 per replica), same initial weights. Losses are normalised
    globally (positive anchors / pixels summed over replicas) and batch norm is synchronised,
    so only float32 summation order differs: tolerance 1e-4 relative on losses, 1e-4 absolute
    on weights after one SGD step.
    """
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest configures 2 logical CPU devices"
    config = tiny_config(task, digit_scenes_data_dir)
    config.train.weight_decay = weight_decay
    config.train.clipnorm = clipnorm
    config.train.warmup_steps = 0
    config.train.learning_rate = 0.01
    info = tasks.dataset_info(config)
    batch = next(iter(tasks.train_dataset(config, info, 4)))

    def build():
        model = tasks.build_model(config, tasks.num_classes(config, info))
        tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
        return model

    def step(model):
        before = [v.numpy() for v in model.trainable_variables]
        history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        update = np.sqrt(sum(np.sum((v.numpy() - b) ** 2)
                             for v, b in zip(model.trainable_variables, before)))
        return {"loss": history.history["loss"][0], "update_norm": update}

    results = distributed_step.one_step_per_strategy(
        (tf.distribute.get_strategy(), strategy_lib.cpu_mirrored_strategy(2)), build, step,
        prepare=lambda model: model(batch[0][:1]))
    distributed_step.assert_steps_match(results, ["loss"])
    if clipnorm < 1.0:
        # First SGD step: update = lr * clipped gradient, so its norm shows the clip engaged.
        for logs, _ in results:
            assert logs["update_norm"] == pytest.approx(0.01 * clipnorm, rel=1e-3)


def test_periodic_evaluations_compile_predict_and_load_ground_truth_once(
        tmp_path, digit_scenes_data_dir, monkeypatch):
    """Evaluations at steps 2, 4 and 6 of one run share one traced predict function and one
    copy of the ground truth (they were rebuilt, and predict retraced, at every evaluation)."""
    calls = {"predict_fn": 0, "inputs": 0}
    make_predict_fn, evaluation_inputs = evaluator.make_predict_fn, trainer.evaluation_inputs

    def counting_predict_fn(*args, **kwargs):
        calls["predict_fn"] += 1
        return make_predict_fn(*args, **kwargs)

    def counting_inputs(*args, **kwargs):
        calls["inputs"] += 1
        return evaluation_inputs(*args, **kwargs)
    monkeypatch.setattr(evaluator, "make_predict_fn", counting_predict_fn)
    monkeypatch.setattr(trainer, "evaluation_inputs", counting_inputs)
    config = tiny_config("detection", digit_scenes_data_dir, steps=6)
    config.train.eval_every = 2
    trainer.train(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics_history.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [2, 4, 6]
    assert calls == {"predict_fn": 1, "inputs": 1}
