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

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order
import distributed_step  # tests/distributed_step.py  # pylint: disable=g-bad-import-order


def numpy_normalizer(human, pseudo, alpha, decay, human_has=None, pseudo_has=None,
                     average_terms=False):
    """Reference: per stream, an EMA that starts at its first step WITH targets and skips
    steps without; weight = alpha * avg_h / avg_p once both exist (else alpha)."""
    n = len(human)
    human_has = [True] * n if human_has is None else human_has
    pseudo_has = [True] * n if pseudo_has is None else pseudo_has
    avg_h = avg_p = None
    totals, weights = [], []
    for h, p, h_ok, p_ok in zip(human, pseudo, human_has, pseudo_has):
        if h_ok:
            avg_h = h if avg_h is None else decay * avg_h + (1 - decay) * h
        if p_ok:
            avg_p = p if avg_p is None else decay * avg_p + (1 - decay) * p
        w = alpha * avg_h / avg_p if avg_h is not None and avg_p is not None else alpha
        weights.append(w)
        total = h + w * p
        totals.append(total / (1 + alpha) if average_terms else total)
    return np.array(totals), np.array(weights)


def _run_normalizer(human, pseudo, alpha, decay, human_has, pseudo_has, average_terms=False):
    avg_h = avg_p = 0.0
    count_h = count_p = 0.0
    totals, weights = [], []
    for h, p, h_ok, p_ok in zip(human, pseudo, human_has, pseudo_has):
        avg_h, count_h = loss_norm.update_moving_average(avg_h, h, decay, count_h, h_ok)
        avg_p, count_p = loss_norm.update_moving_average(avg_p, p, decay, count_p, p_ok)
        w = loss_norm.auxiliary_weight(avg_h, avg_p, alpha, True, count_h, count_p)
        weights.append(float(w))
        totals.append(float(loss_norm.total_loss(h, [(p, w)], alpha if average_terms else None)))
    return np.array(totals), np.array(weights)


@pytest.mark.parametrize("average_terms", [False, True])
def test_loss_normalizer_matches_numpy_reference(average_terms):
    rng = np.random.default_rng(0)
    human = rng.uniform(0.5, 2.0, 12)
    pseudo = rng.uniform(5.0, 500.0, 12)  # pseudo losses can be 10-1000x the human loss
    always = [True] * 12
    ref_totals, ref_weights = numpy_normalizer(human, pseudo, 0.7, 0.9,
                                               average_terms=average_terms)
    totals, weights = _run_normalizer(human, pseudo, 0.7, 0.9, always, always, average_terms)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5)
    np.testing.assert_allclose(totals, ref_totals, rtol=1e-5)
    assert float(loss_norm.auxiliary_weight(1.0, 4.0, 0.5, False)) == 0.5


def test_empty_batches_do_not_move_the_averages():
    """Empty pseudo (and human) batches, the first one included, are skipped by the averages:
    the weight after them is what the non-empty steps alone give (not ~100x)."""
    rng = np.random.default_rng(1)
    human = rng.uniform(0.5, 2.0, 10)
    pseudo = rng.uniform(0.5, 2.0, 10)
    pseudo_has = [False, True, True, False, False, True, True, True, False, True]
    human_has = [True, True, False, True, True, True, True, True, True, True]
    pseudo = np.where(pseudo_has, pseudo, 0.01)  # an empty stream's loss is near 0
    ref_totals, ref_weights = numpy_normalizer(human, pseudo, 1.0, 0.9, human_has, pseudo_has)
    totals, weights = _run_normalizer(human, pseudo, 1.0, 0.9, human_has, pseudo_has)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5)
    np.testing.assert_allclose(totals, ref_totals, rtol=1e-5)
    assert weights[0] == 1.0  # no pseudo average yet: ratio 1
    assert weights.max() < 10.0
    # Fed the empty values instead, the weight starts ~100x larger and stays inflated.
    fed = _run_normalizer(human, pseudo, 1.0, 0.9, [True] * 10, [True] * 10)[1]
    assert fed[0] > 20 * weights[0] and fed[1] > 5 * weights[1]


def test_pseudo_weight_gets_no_gradient():
    human, pseudo = tf.Variable(2.0), tf.Variable(8.0)
    with tf.GradientTape() as tape:
        weight = loss_norm.auxiliary_weight(human * 1.0, pseudo * 1.0, 1.0, True)
        total = loss_norm.total_loss(human, [(pseudo, weight)])
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
    batch = {"human": pair[0], "pseudo": pair[1]}  # a student batch of named streams
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
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
    losses = {"human": h_loss, "pseudo": p_loss}
    weight = model.normalizer.update(losses, {"human": True, "pseudo": True})
    total = model.normalizer.total(losses, weight)
    weight = weight["pseudo"]
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


def test_normaliser_inside_the_model_follows_the_reference_over_steps(batches):
    """Five student steps with empty pseudo batches (the first included) and an empty human
    batch mixed in: the weights and totals the model logs follow the NumPy reference fed with
    the losses it logs (which differ step to step as the model learns)."""
    config, human, (p_images, p_targets) = batches
    (h_images, h_targets) = human
    empty = {"boxes": -tf.ones_like(p_targets["boxes"]),
             "classes": -tf.ones_like(p_targets["classes"])}
    h_empty = {"boxes": -tf.ones_like(h_targets["boxes"]),
               "classes": -tf.ones_like(h_targets["classes"])}
    pseudo_has = [False, True, False, True, True]
    human_has = [True, True, True, False, True]
    model = _student(config, alpha=0.7)
    model.configure_student("detection", 0.7, True, 0.5)
    logs = []
    for h_ok, p_ok in zip(human_has, pseudo_has):
        pair = ((h_images, h_targets if h_ok else h_empty),
                (p_images, p_targets if p_ok else empty))
        logs.append(_one_step(model, pair))
    human_l = np.array([log["human_loss"] for log in logs])
    pseudo_l = np.array([log["pseudo_loss"] for log in logs])
    assert np.all(pseudo_l > 0)  # empty pseudo batches still have a background loss
    ref_totals, ref_weights = numpy_normalizer(human_l, pseudo_l, 0.7, 0.5, human_has,
                                               pseudo_has)
    np.testing.assert_allclose([log["pseudo_weight"] for log in logs], ref_weights, rtol=1e-4)
    np.testing.assert_allclose([log["loss"] for log in logs], ref_totals, rtol=1e-4)
    assert logs[0]["pseudo_weight"] == pytest.approx(0.7)  # no pseudo average yet
    assert [log["pseudo_positives"] > 0 for log in logs] == pseudo_has


def test_average_terms_divides_the_total_by_one_plus_alpha(batches):
    config, human, pseudo = batches
    model = _student(config, alpha=0.5)
    model.configure_student("detection", 0.5, True, 0.99, average_terms=True)
    logs = _one_step(model, (human, pseudo))
    expected = (logs["human_loss"] + logs["pseudo_weight"] * logs["pseudo_loss"]) / 1.5
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_resumed_student_keeps_its_normaliser_and_a_new_one_starts_afresh(batches, tmp_path):
    """The training checkpoint holds the normaliser state beside the model; a checkpoint's
    `model` alone (what `init=teacher:` restores) does not carry it."""
    from rethink_tf.training import checkpoints  # pylint: disable=g-import-not-at-top
    config, human, pseudo = batches
    model = _student(config, alpha=0.5)
    _one_step(model, (human, pseudo))
    avg = float(model.loss_normalizer.avg_pseudo_loss.numpy())
    assert avg > 0
    manager = checkpoints.CheckpointManager(str(tmp_path), model=model,
                                            optimizer=model.optimizer,
                                            **model.checkpoint_extras())
    manager.save(1)
    resumed = _student(config, alpha=0.5)
    resumed(human[0][:1])
    resumed.optimizer.build(resumed.trainable_variables)
    checkpoints.CheckpointManager(str(tmp_path), model=resumed, optimizer=resumed.optimizer,
                                  **resumed.checkpoint_extras()).restore_latest()
    assert float(resumed.loss_normalizer.avg_pseudo_loss.numpy()) == avg
    fresh = _student(config, alpha=0.5)
    fresh(human[0][:1])
    fresh.optimizer.build(fresh.trainable_variables)
    checkpoints.restore_model(fresh, str(tmp_path), which="latest")
    # Weights only: a compiled model tracks its optimizer, whose step must stay 0 (else the
    # new run would start at the old one's last step and not train).
    assert int(fresh.optimizer.iterations.numpy()) == 0
    assert all(not np.any(v.numpy()) for v in fresh.optimizer.variables if "momentum" in v.name)
    assert float(fresh.loss_normalizer.avg_pseudo_loss.numpy()) == 0.0
    assert float(fresh.loss_normalizer.pseudo_updates.numpy()) == 0.0
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


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


def test_student_step_on_targets_encoded_in_the_pipeline_equals_the_step(batches,
                                                                         digit_scenes_data_dir):
    """`train.encode_targets=pipeline`: the human and pseudo batches arrive with their anchor
    targets (encoded in tf.data), and the student's step gives the losses and weights of the
    step that encodes them itself."""
    config, human, pseudo = batches
    encoded_config = config.copy_and_resolve_references()
    encoded_config.train.encode_targets = "pipeline"
    info = tasks.dataset_info(encoded_config)
    it = iter(tasks.train_dataset(encoded_config, info, 4))
    e_human, e_pseudo = next(it), next(it)
    assert "class_targets" in e_human[1] and "class_targets" in e_pseudo[1]
    np.testing.assert_array_equal(e_human[0], human[0])  # the same batches, plus targets
    plain, encoded = _student(config, alpha=0.7), _student(config, alpha=0.7)
    a = _one_step(plain, (human, pseudo))
    b = _one_step(encoded, (e_human, e_pseudo))
    for key in ("loss", "human_loss", "pseudo_loss", "pseudo_weight", "pseudo_positives"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    for x, y in zip(plain.get_weights(), encoded.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
