"""Pure loss functions (keras.ops; eager and graph) and their thin Keras `Loss` wrappers.

The ignore label is handled by masking, never by remapping: pixels labelled `ignore_label`
contribute nothing to the value or the gradient, whatever the logits there. (Remapping 255 to
class 0 before an ignore-class loss, a known bug elsewhere, makes them count as class 0.)
"""

import keras
from keras import ops

from rethink_tf.data.example import IGNORE_LABEL


def cross_replica_normalizer(local_count):
    """The loss normaliser that makes a distributed step equal a single-device step.

    Our losses are sums divided by a count that varies per replica (positive anchors, labelled
    pixels). Keras 3 does not rescale such already-reduced losses per replica, and the
    gradients of the replicas are summed; so each replica must divide its sum S_r by the count
    N summed over ALL replicas: sum_r S_r / N is then exactly the single-device loss (and its
    gradient). Outside a replica context, or with one replica, this is `local_count`.

    Args:
        local_count: this replica's count (float scalar).

    Returns:
        The count summed over replicas.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return local_count
    return context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)


def _prepare(y_true, logits):
    """Labels [B, H, W] int32 (trailing channel of 1 dropped) and float32 logits."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(logits.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32"), ops.cast(logits, "float32")


def masked_sparse_categorical_crossentropy_per_example(y_true, logits,
                                                        ignore_label=IGNORE_LABEL):
    """Per-example sum of pixel cross-entropies over non-ignored pixels, and their count.

    Lets a train step weigh sub-batches (human vs pseudo labels) before normalising.

    Args:
        y_true: int labels [B, H, W, 1] or [B, H, W]; `ignore_label` marks ignored pixels.
        logits: [B, H, W, C] unnormalised scores at the label resolution.
        ignore_label: the label value to ignore.

    Returns:
        (loss_sum, pixel_count): two float32 tensors of shape [B].
    """
    labels, logits = _prepare(y_true, logits)
    valid = ops.not_equal(labels, ignore_label)
    # Ignored pixels get a harmless in-range label; `where` then drops their value and gradient.
    safe_labels = ops.where(valid, labels, ops.zeros_like(labels))
    per_pixel = keras.losses.sparse_categorical_crossentropy(safe_labels, logits,
                                                             from_logits=True)
    per_pixel = ops.where(valid, per_pixel, ops.zeros_like(per_pixel))
    batch = ops.shape(per_pixel)[0]
    loss_sum = ops.sum(ops.reshape(per_pixel, (batch, -1)), axis=1)
    count = ops.sum(ops.reshape(ops.cast(valid, "float32"), (batch, -1)), axis=1)
    return loss_sum, count


def masked_sparse_categorical_crossentropy(y_true, logits, ignore_label=IGNORE_LABEL):
    """Mean pixel cross-entropy over the non-ignored pixels of the batch.

    Under tf.distribute the mean is over the global batch's pixels (see
    `cross_replica_normalizer`).

    Args:
        y_true: int labels [B, H, W, 1] or [B, H, W]; `ignore_label` marks ignored pixels.
        logits: [B, H, W, C] unnormalised scores.
        ignore_label: the label value to ignore.

    Returns:
        A float32 scalar; 0 (not NaN) when every pixel is ignored.
    """
    return normalised_pixel_loss(*masked_sparse_categorical_crossentropy_per_example(
        y_true, logits, ignore_label))


def normalised_pixel_loss(loss_sum, count):
    """Mean pixel loss from per-example sums and counts (or a slice of them, for a sub-batch),
    normalised by the non-ignored pixels of the global batch; 0 when there are none."""
    return ops.divide_no_nan(ops.sum(loss_sum), cross_replica_normalizer(ops.sum(count)))


def smoothed_cross_entropy_per_example(labels, logits, label_smoothing=0.0):
    """Softmax cross-entropy of integer labels against logits, with label smoothing.

    The target of example i is (1 - s) * onehot(labels_i) + s / C over the C classes.

    Args:
        labels: int [B] class ids.
        logits: [B, C] unnormalised scores.
        label_smoothing: s in [0, 1).

    Returns:
        float32 [B].
    """
    logits = ops.cast(logits, "float32")
    one_hot = ops.one_hot(ops.cast(ops.reshape(labels, [-1]), "int32"), ops.shape(logits)[-1])
    return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True,
                                                 label_smoothing=label_smoothing)


def classification_loss(labels, logits, label_smoothing=0.0):
    """Mean smoothed cross-entropy over the global batch (`cross_replica_normalizer`): each
    replica returns its partial sum, so the replicas' gradients sum to the global mean's."""
    per_example = smoothed_cross_entropy_per_example(labels, logits, label_smoothing)
    count = ops.cast(ops.shape(per_example)[0], "float32")
    return ops.divide_no_nan(ops.sum(per_example), cross_replica_normalizer(count))


@keras.saving.register_keras_serializable(package="rethink_tf")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """`masked_sparse_categorical_crossentropy` as a Keras loss, for `model.compile`.

    The value is already the mean over non-ignored pixels of the batch (no sample weights).

    Args:
        ignore_label: the label value to ignore.
    """

    def __init__(self, ignore_label=IGNORE_LABEL, name="masked_sparse_categorical_crossentropy",
                 **kwargs):
        super().__init__(name=name, reduction="sum", **kwargs)
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        return masked_sparse_categorical_crossentropy(y_true, y_pred, self.ignore_label)

    def get_config(self):
        return {"name": self.name, "ignore_label": self.ignore_label}
