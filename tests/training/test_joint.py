"""Joint training: the step against the supervised and student steps, gradients, distribution,
and a joint workdir's export (the plain model's signatures)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.training import config as config_lib
from rethink_tf.training import joint
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import strategy as strategy_lib
from rethink_tf.training import student
from rethink_tf.training import tasks

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order
import distributed_step  # tests/distributed_step.py  # pylint: disable=g-bad-import-order

CLASSIFICATION = "digit_scenes/classification_tiny"


def joint_config(data_dir, task="detection"):
    config = tiny_config(task, data_dir)
    config.joint.dataset = CLASSIFICATION
    config.joint.batch_size = 4
    config.joint.image_size = 32
    config.train.weight_decay = 0.0
    config.train.warmup_steps = 0
    return config


@pytest.fixture(scope="module")
def batches(digit_scenes_data_dir):
    config = joint_config(digit_scenes_data_dir)
    it = iter(tasks.train_dataset(config, tasks.dataset_info(config), 4))
    human, pseudo = next(it), next(it)
    cls_config = tiny_config("classification", digit_scenes_data_dir)
    classes = next(iter(tasks.train_dataset(cls_config, tasks.dataset_info(cls_config), 4)))
    return config, human, pseudo, classes


def _compiled(model, config):
    tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
    return model


def _joint(config, alpha_c=1.0, alpha_p=None, seed=0):
    keras.utils.set_random_seed(seed)
    config = config.copy_and_resolve_references()
    config.joint.alpha = alpha_c
    if alpha_p is not None:
        config.self_training.pseudo_labels = "/unused"  # builds the pseudo stream's weight
        config.self_training.alpha = alpha_p
    return _compiled(joint.build_joint_model(config, 10), config)


def _own_variables(model):
    """The task model's trainable variables (a joint model's also include its head's)."""
    head = getattr(model, "joint_head", None)
    skip = {id(v) for v in head.trainable_variables} if head is not None else set()
    return [v for v in model.trainable_variables if id(v) not in skip]


def _grads(model, loss_fn):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    return loss, tape.gradient(loss, _own_variables(model))


def _assert_same(loss_a, grads_a, loss_b, grads_b, exact=True):
    assert len(grads_a) == len(grads_b)
    if exact:
        assert float(loss_a) == float(loss_b)
        for a, b in zip(grads_a, grads_b):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        return
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_zero_classification_weight_gives_exactly_the_supervised_step(task, batches,
                                                                      digit_scenes_data_dir):
    config, human, _, classes = batches
    if task == "segmentation":
        config = joint_config(digit_scenes_data_dir, "segmentation")
        human = next(iter(tasks.train_dataset(config, tasks.dataset_info(config), 4)))
    model = _joint(config, alpha_c=0.0)
    supervised = _compiled(tasks.build_model(config, model.num_classes), config)
    supervised.set_weights(model.get_weights())
    images, targets = human
    data = {"human": human, "classification": classes}
    loss, grads = _grads(model, lambda: model.joint_total(data)[0])
    sup_loss, sup_grads = _grads(supervised, lambda: supervised.compute_loss(
        x=images, y=targets, y_pred=supervised(images, training=True)))
    # Segmentation shares the supervised loss function: bit for bit. Detection's supervised
    # step sums the same per-anchor terms through Keras' compiled-loss path, the joint (and
    # student) step through `detector_loss_terms`: equal up to float32 summation order.
    _assert_same(loss, grads, sup_loss, sup_grads, exact=task == "segmentation")
    assert float(model.normalizer.state.average("classification")) > 0  # L_c was computed


def test_zero_classification_weight_gives_exactly_the_student_step(batches):
    config, human, pseudo, classes = batches
    model = _joint(config, alpha_c=0.0, alpha_p=0.7)
    ref = student.build_student_model(config, 10)
    st = config.self_training
    ref.configure_student("detection", 0.7, st.loss_norm, st.decay)
    ref.set_weights(model.get_weights())
    images = tf.concat([human[0], pseudo[0]], 0)

    def student_total():
        h_loss, p_loss, extra = ref.student_losses((human[0], pseudo[0]), (human[1], pseudo[1]),
                                                   ref(images, training=True), 4)
        losses = {"human": h_loss, "pseudo": p_loss}
        weights = ref.normalizer.update(losses, {"human": extra["human_targets"] > 0,
                                                 "pseudo": extra["pseudo_targets"] > 0})
        return ref.normalizer.total(losses, weights)

    data = {"human": human, "pseudo": pseudo, "classification": classes}
    loss, grads = _grads(model, lambda: model.joint_total(data)[0])
    ref_loss, ref_grads = _grads(ref, student_total)
    _assert_same(loss, grads, ref_loss, ref_grads)
    assert float(model.normalizer.state.average("pseudo")) > 0  # the pseudo term was there


def test_joint_total_on_targets_encoded_in_the_pipeline_equals_the_step(batches):
    """`train.encode_targets=pipeline`: the human and pseudo batches carry their anchor
    targets; the joint loss and gradients equal those of the step that encodes them."""
    config, human, pseudo, classes = batches
    encoded_config = config.copy_and_resolve_references()
    encoded_config.train.encode_targets = "pipeline"
    it = iter(tasks.train_dataset(encoded_config, tasks.dataset_info(encoded_config), 4))
    e_human, e_pseudo = next(it), next(it)
    assert "class_targets" in e_human[1]
    model = _joint(config, alpha_c=0.5, alpha_p=0.7)
    plain = {"human": human, "pseudo": pseudo, "classification": classes}
    encoded = {"human": e_human, "pseudo": e_pseudo, "classification": classes}
    loss, grads = _grads(model, lambda: model.joint_total(plain)[0])
    again = _joint(config, alpha_c=0.5, alpha_p=0.7)  # the same seed: the same weights
    e_loss, e_grads = _grads(again, lambda: again.joint_total(encoded)[0])
    _assert_same(loss, grads, e_loss, e_grads, exact=False)


def test_classification_loss_trains_the_backbone_and_its_head_only(batches):
    config, human, _, classes = batches
    model = _joint(config)
    data = {"human": human, "classification": classes}
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        losses = model.joint_losses(data)[0]
    grads = dict(zip([v.path for v in variables],
                     tape.gradient(losses["classification"], variables)))
    backbone = {v.path for v in model.backbone.trainable_variables}
    head = {v.path for v in model.joint_head.trainable_variables}
    assert head <= {v.path for v in variables}  # trained beside the model's own
    assert not head & {v.path for v in model.weights}  # but not part of the model
    reached = {path for path, g in grads.items()
               if g is not None and float(tf.reduce_max(tf.abs(g))) > 0}
    assert head <= reached
    assert reached & backbone, "no gradient reached the backbone"
    assert reached <= backbone | head, sorted(reached - backbone - head)  # no task-head grads


def test_joint_step_logs_every_term_and_empty_pseudo_keeps_weights_finite(batches):
    config, human, pseudo, classes = batches
    empty = {"boxes": -tf.ones_like(pseudo[1]["boxes"]),
             "classes": -tf.ones_like(pseudo[1]["classes"])}
    model = _joint(config, alpha_c=0.5, alpha_p=1.0)
    data = {"human": human, "pseudo": (pseudo[0], empty), "classification": classes}
    history = model.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=2,
                        epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    for name in ("loss", "human_loss", "pseudo_loss", "classification_loss",
                 "avg_human_loss", "avg_classification_loss", "avg_pseudo_loss",
                 "classification_weight", "pseudo_weight", "classification_top1"):
        assert np.isfinite(logs[name]), name
    assert logs["avg_pseudo_loss"] == 0.0 and logs["pseudo_weight"] == 1.0  # never updated
    # First values of the averages are the losses: w_c = alpha_c * L_h / L_c at step 1.
    assert 0 <= logs["classification_top1"] <= 1
    for w in model.trainable_variables:
        assert np.all(np.isfinite(w.numpy())), w.path


def test_joint_step_under_mirrored_strategy_matches_default(batches):
    """2 logical CPUs x (2 human + 2 pseudo + 2 classification) vs one device x (4 + 4 + 4)."""
    config, human, pseudo, classes = batches
    data = {"human": human, "pseudo": pseudo, "classification": classes}

    def step(model):
        history = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
        logs = {k: v[0] for k, v in history.history.items()}
        logs["head"] = np.concatenate([w.numpy().ravel() for w in model.joint_head.weights])
        return logs

    results = distributed_step.one_step_per_strategy(
        (tf.distribute.get_strategy(), strategy_lib.cpu_mirrored_strategy(2)),
        lambda: _joint(config, alpha_c=0.6, alpha_p=0.7), step,
        prepare=lambda model: model(human[0][:1]))
    distributed_step.assert_steps_match(
        results, ["loss", "human_loss", "pseudo_loss", "classification_loss",
                  "classification_weight", "pseudo_weight", "classification_top1"])
    np.testing.assert_allclose(results[0][0]["head"], results[1][0]["head"], atol=1e-4)


def test_joint_config_errors_name_the_field(digit_scenes_data_dir):
    config = joint_config(digit_scenes_data_dir)
    config.joint.dataset = "no_such_corpus"
    with pytest.raises(ValueError, match="config.joint.dataset: cannot open 'no_such_corpus'"):
        config_lib.validate(config)
    config = joint_config(digit_scenes_data_dir)
    config.joint.augment = "s9"
    with pytest.raises(ValueError, match="config.joint.augment"):
        config_lib.validate(config)
    config = joint_config(digit_scenes_data_dir)
    config.joint.split = "nope"
    with pytest.raises(ValueError, match="config.joint.split: split 'nope' not in"):
        config_lib.validate(config)
    config = joint_config(digit_scenes_data_dir, "classification")
    with pytest.raises(ValueError, match="config.task: joint training"):
        config_lib.validate(config)
    config = joint_config(digit_scenes_data_dir)
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    with pytest.raises(ValueError, match="config.joint.dataset: a joint config trains through"):
        trainer.train(config, "/nonexistent/never/written")
    config.joint.batch_size = 3
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
    with pytest.raises(ValueError, match="joint.batch_size=3 does not divide over 2 replicas"):
        tasks.joint_dataset(config, tasks.dataset_info(config), 2, ctx)


def test_joint_workdir_trains_resumes_and_exports_the_plain_model(tmp_path,
                                                                  digit_scenes_data_dir):
    from rethink_tf.serving import export as export_lib  # pylint: disable=g-import-not-at-top
    config = joint_config(digit_scenes_data_dir)
    config.train.steps = 4
    workdir = str(tmp_path / "joint")

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= 2:
                self.model.stop_training = True

    joint.train_joint(config, workdir, extra_callbacks=[Stop()])
    metrics = joint.train_joint(config, workdir)  # resumes at step 2
    assert metrics["step"] == 4 and "AP" in metrics
    with open(os.path.join(workdir, "metrics_history.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [2, 4]
    # The checkpoint's model is the plain detector: it restores strictly into one.
    _, plain, _ = tasks.load_model(workdir, "latest")
    assert type(plain).__name__ == "Detector"
    joint_export = export_lib.export(workdir, str(tmp_path / "export_joint"))
    sup_config = tiny_config("detection", digit_scenes_data_dir, steps=1)
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    trainer.train(sup_config, str(tmp_path / "sup"))
    sup_export = export_lib.export(str(tmp_path / "sup"), str(tmp_path / "export_sup"))

    def signatures(path):
        loaded = tf.saved_model.load(path)
        return {name: (sorted(fn.structured_input_signature[1]),
                       {k: v.shape.as_list() for k, v in fn.structured_outputs.items()})
                for name, fn in loaded.signatures.items()}

    assert signatures(joint_export) == signatures(sup_export)
