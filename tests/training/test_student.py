"""The student train_step: loss normalisation, alpha = 0, empty pseudo labels, distribution."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.training import strategy as strategy_lib

from rethink_tf.models import detector as detector_lib
from rethink_tf.training import loss_norm
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import student
from rethink_tf.training import tasks

from test_trainer import tiny_config  # pylint: disable=g-bad-import-order
import distributed_step  # tests/distributed_step.py  # pylint: disable=g-bad-import-order


def numpy_normalizer(human, pseudo, alpha, decay):
    """Reference: EMA (first value = value), weight = alpha * avg_h / avg_p."""
    avg_h = avg_p = None
    totals, weights = [], []
    for h, p in zip(human, pseudo):
        avg_h = h if avg_h is None else decay * avg_h + (1 - decay) * h
        avg_p = p if avg_p is None else decay * avg_p + (1 - decay) * p
        w = alpha * avg_h / avg_p
        weights.append(w)
        totals.append(h + w * p)
    return np.array(totals), np.array(weights)


def test_loss_normalizer_matches_numpy_reference():
    rng = np.random.default_rng(0)
    human = rng.uniform(0.5, 2.0, 12)
    pseudo = rng.uniform(5.0, 500.0, 12)  # pseudo losses can be 10-1000x the human loss
    ref_totals, ref_weights = numpy_normalizer(human, pseudo, alpha=0.7, decay=0.9)
    avg_h = avg_p = 0.0
    for i, (h, p) in enumerate(zip(human, pseudo)):
        avg_h = loss_norm.update_moving_average(avg_h, h, 0.9, i)
        avg_p = loss_norm.update_moving_average(avg_p, p, 0.9, i)
        w = loss_norm.pseudo_weight(avg_h, avg_p, 0.7, True)
        np.testing.assert_allclose(float(w), ref_weights[i], rtol=1e-5)
        np.testing.assert_allclose(float(loss_norm.total_loss(h, p, w)), ref_totals[i],
                                   rtol=1e-5)
    assert float(loss_norm.pseudo_weight(1.0, 4.0, 0.5, False)) == 0.5
    # No pseudo loss seen yet: the weight stays finite.
    assert float(loss_norm.pseudo_weight(1.0, 0.0, 1.0, True)) == 1.0


def test_pseudo_weight_gets_no_gradient():
    human, pseudo = tf.Variable(2.0), tf.Variable(8.0)
    with tf.GradientTape() as tape:
        weight = loss_norm.pseudo_weight(human * 1.0, pseudo * 1.0, 1.0, True)
        total = loss_norm.total_loss(human, pseudo, weight)
    grad_h, grad_p = tape.gradient(total, [human, pseudo])
    assert float(grad_h) == 1.0 and float(grad_p) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def batches(digit_scenes_data_dir):
    config = tiny_config("detection", digit_scenes_data_dir)
    info = tasks.dataset_info(config)
    it = iter(tasks.train_dataset(config, info, 4))
    human, pseudo = next(it), next(it)
    return config, human, pseudo


def _student(config, alpha=1.0, loss_norm_on=True, seed=0):
    keras.utils.set_random_seed(seed)
    config = config.copy_and_resolve_references()
    config.self_training.alpha = alpha
    config.self_training.loss_norm = loss_norm_on
    config.train.weight_decay = 0.0
    config.train.warmup_steps = 0
    model = student.build_student_model(config, 10)
    tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
    return model


def _one_step(model, pair):
    history = model.fit(tf.data.Dataset.from_tensors(pair), epochs=1, verbose=0)
    return {k: v[0] for k, v in history.history.items()}


def test_student_step_logs_every_term_and_matches_the_formula(batches):
    config, human, pseudo = batches
    model = _student(config, alpha=0.5)
    logs = _one_step(model, (human, pseudo))
    for name in ("human_loss", "pseudo_loss", "avg_human_loss", "avg_pseudo_loss",
                 "pseudo_weight", "human_box_loss", "pseudo_classification_loss"):
        assert np.isfinite(logs[name]), name
    # First step: averages equal the losses, so weight = alpha * L_h / L_p.
    assert logs["avg_human_loss"] == pytest.approx(logs["human_loss"], rel=1e-5)
    assert logs["pseudo_weight"] == pytest.approx(0.5 * logs["human_loss"] / logs["pseudo_loss"],
                                                  rel=1e-4)
    assert logs["loss"] == pytest.approx(logs["human_loss"] + 0.5 * logs["human_loss"], rel=1e-4)


def test_alpha_zero_gives_exactly_the_supervised_loss(batches):
    config, human, pseudo = batches
    model = _student(config, alpha=0.0)
    (h_images, h_targets), (p_images, p_targets) = human, pseudo
    images = tf.concat([h_images, p_images], 0)
    y_pred = model(images, training=True)
    h_loss, p_loss, _ = model.student_losses((h_images, p_images), (h_targets, p_targets),
                                             y_pred, 4)
    supervised = detector_lib.detector_loss_terms(
        model, h_images, h_targets, detector_lib.slice_predictions(y_pred, 0, 4))["loss"]
    weight = model._update_normalizer(h_loss, p_loss)  # pylint: disable=protected-access
    total = loss_norm.total_loss(h_loss, p_loss, weight)
    assert float(weight) == 0.0
    assert float(total) == float(supervised)
    # And through fit: the total loss logged equals the human loss.
    logs = _one_step(_student(config, alpha=0.0), (human, pseudo))
    assert logs["loss"] == logs["human_loss"]


def test_empty_pseudo_labels_give_a_finite_loss(batches):
    config, human, (p_images, p_targets) = batches
    empty = {"boxes": -tf.ones_like(p_targets["boxes"]),
             "classes": -tf.ones_like(p_targets["classes"])}
    model = _student(config)
    logs = _one_step(model, (human, (p_images, empty)))
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["pseudo_box_loss"] == 0.0 and logs["pseudo_positives"] == 0.0
    assert np.isfinite(model.get_weights()[0]).all()


def test_student_step_under_mirrored_strategy_matches_default(batches):
    """2 logical CPUs x (2 human + 2 pseudo) vs one device x (4 + 4): same losses, weights.

    Tolerance as in the supervised test (float32 summation order only).
    """
    config, human, pseudo = batches
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2
    results = distributed_step.one_step_per_strategy(
        (tf.distribute.get_strategy(), strategy_lib.cpu_mirrored_strategy(2)),
        lambda: _student(config, alpha=0.7), lambda model: _one_step(model, (human, pseudo)),
        prepare=lambda model: model(human[0][:1]))
    distributed_step.assert_steps_match(
        results, ["loss", "human_loss", "pseudo_loss", "pseudo_weight"])


def test_student_segmentation_step(digit_scenes_data_dir):
    config = tiny_config("segmentation", digit_scenes_data_dir)
    info = tasks.dataset_info(config)
    it = iter(tasks.train_dataset(config, info, 2))
    (h_images, h_masks), (p_images, p_masks) = next(it), next(it)
    p_masks = tf.where(tf.range(64)[None, :, None, None] < 32, p_masks, 255)  # half ignored
    keras.utils.set_random_seed(0)
    model = student.build_student_model(config, 11)
    tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
    logs = _one_step(model, ((h_images, h_masks), (p_images, p_masks)))
    assert np.isfinite(logs["loss"]) and logs["pseudo_weight"] > 0


def test_concat_box_targets_pads_the_sub_batch_with_fewer_slots():
    first = {"boxes": tf.ones([2, 3, 4]), "classes": tf.zeros([2, 3])}
    second = {"boxes": 2 * tf.ones([1, 5, 4]), "classes": tf.ones([1, 5])}
    out = student.concat_box_targets(first, second)
    assert out["boxes"].shape == (3, 5, 4) and out["classes"].shape == (3, 5)
    np.testing.assert_array_equal(out["boxes"][:2, :3], 1.0)
    np.testing.assert_array_equal(out["classes"][:2, :3], 0.0)
    np.testing.assert_array_equal(out["classes"][:2, 3:], -1.0)  # padding rows
    np.testing.assert_array_equal(out["boxes"][2], 2.0)
    np.testing.assert_array_equal(out["classes"][2], 1.0)
