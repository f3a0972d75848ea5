"""Masked pixel cross-entropy: NumPy reference, ignored pixels truly ignored, never NaN."""

import numpy as np
import tensorflow as tf

from rethink_tf.models import losses


def _numpy_reference(labels, logits, ignore=255):
    labels = labels[..., 0]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    valid = labels != ignore
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    per_example_sum = -(picked * valid).reshape(len(labels), -1).sum(1)
    return per_example_sum, valid.reshape(len(labels), -1).sum(1)


def _data(seed=0):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 4, (3, 8, 8, 1)).astype("int32")
    labels[rng.uniform(size=labels.shape) < 0.3] = 255
    logits = rng.normal(size=(3, 8, 8, 4)).astype("float32") * 3
    return labels, logits


def test_matches_numpy_reference():
    labels, logits = _data()
    ref_sum, ref_count = _numpy_reference(labels, logits)
    loss_sum, count = losses.masked_sparse_categorical_crossentropy_per_example(labels, logits)
    np.testing.assert_allclose(np.asarray(loss_sum), ref_sum, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(count), ref_count)
    np.testing.assert_allclose(float(losses.masked_sparse_categorical_crossentropy(
        labels, logits)), ref_sum.sum() / ref_count.sum(), rtol=1e-5)
    # Labels without the channel axis give the same value.
    np.testing.assert_allclose(float(losses.masked_sparse_categorical_crossentropy(
        labels[..., 0], logits)), ref_sum.sum() / ref_count.sum(), rtol=1e-5)


def test_ignored_pixels_change_nothing_in_value_or_gradient():
    labels, logits = _data(1)
    ignored = labels[..., 0] == 255
    other = logits.copy()
    other[ignored] = np.random.RandomState(2).normal(size=other[ignored].shape) * 1e3
    logits_t, other_t = tf.constant(logits), tf.constant(other)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits_t, other_t])
        a = losses.masked_sparse_categorical_crossentropy(labels, logits_t)
        b = losses.masked_sparse_categorical_crossentropy(labels, other_t)
    assert float(a) == float(b)
    grad_a, grad_b = tape.gradient(a, logits_t).numpy(), tape.gradient(b, other_t).numpy()
    assert np.all(grad_a[ignored] == 0.0)
    np.testing.assert_allclose(grad_a, grad_b, atol=1e-7)


def test_ignore_is_not_remapped_to_class_zero():
    labels, logits = _data(3)
    remapped = np.where(labels == 255, 0, labels)
    assert float(losses.masked_sparse_categorical_crossentropy(labels, logits)) != float(
        losses.masked_sparse_categorical_crossentropy(remapped, logits))


def test_all_ignored_gives_zero_not_nan_with_finite_gradient():
    labels = np.full((2, 4, 4, 1), 255, "int32")
    logits = tf.constant(np.random.RandomState(0).normal(size=(2, 4, 4, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = losses.masked_sparse_categorical_crossentropy(labels, logits)
    assert float(loss) == 0.0
    assert np.all(tape.gradient(loss, logits).numpy() == 0.0)
    _, count = losses.masked_sparse_categorical_crossentropy_per_example(labels, logits)
    np.testing.assert_array_equal(np.asarray(count), [0, 0])


def test_keras_loss_wrapper_equals_function_in_graph_mode():
    labels, logits = _data(4)
    fn = tf.function(lambda y, p: losses.MaskedSparseCategoricalCrossentropy()(y, p))
    np.testing.assert_allclose(float(fn(labels, logits)), float(
        losses.masked_sparse_categorical_crossentropy(labels, logits)), rtol=1e-6)


def test_smoothed_classification_loss_matches_numpy_reference():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 5)
    for smoothing in (0.0, 0.1):
        target = np.full((5, 7), smoothing / 7) + (1 - smoothing) * np.eye(7)[labels]
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ref = -(target * log_p).sum(-1)
        got = losses.smoothed_cross_entropy_per_example(labels, logits, smoothing)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
        np.testing.assert_allclose(float(losses.classification_loss(labels, logits, smoothing)),
                                   ref.mean(), rtol=1e-5)
