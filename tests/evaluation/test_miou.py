"""Mean IoU accumulator: perfect, ignore label, NumPy reference, absent classes, inputs."""

import numpy as np
import pytest

from rethink_tf.evaluation.miou import MeanIoU


def _reference_iou(labels, preds, num_classes, ignore=255):
    keep = labels != ignore
    labels, preds = labels[keep], preds[keep]
    ious = []
    for c in range(num_classes):
        inter = np.sum((labels == c) & (preds == c))
        union = np.sum((labels == c) | (preds == c))
        ious.append(inter / union if union else None)
    return ious


def test_perfect_predictions_give_one():
    labels = np.random.RandomState(0).randint(0, 4, (2, 16, 16, 1))
    metric = MeanIoU(4)
    metric.update(labels, labels)
    result = metric.result()
    assert result["mIoU"] == 1.0 and result["per_class_IoU"] == [1.0] * 4


def test_ignore_label_has_zero_effect():
    rng = np.random.RandomState(1)
    labels = rng.randint(0, 3, (2, 16, 16, 1))
    preds = rng.randint(0, 3, (2, 16, 16))
    with_ignore = labels.copy()
    with_ignore[:, :5] = 255
    a, b = MeanIoU(3), MeanIoU(3)
    a.update(with_ignore, preds)
    # Same labels, predictions changed only where the label is ignored.
    changed = preds.copy()
    changed[:, :5] = (changed[:, :5] + 1) % 3
    b.update(with_ignore, changed)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.confusion.sum() == np.sum(with_ignore != 255)


def test_matches_numpy_reference_over_batches_and_accepts_logits():
    rng = np.random.RandomState(2)
    labels = rng.randint(0, 5, (4, 12, 12, 1))
    labels[rng.uniform(size=labels.shape) < 0.2] = 255
    logits = rng.normal(size=(4, 12, 12, 5))
    preds = logits.argmax(-1)
    metric = MeanIoU(5)
    metric.update(labels[:2], logits[:2])
    metric.update(labels[2:], preds[2:, ..., None])
    expected = _reference_iou(labels[..., 0], preds, 5)
    result = metric.result()
    np.testing.assert_allclose(result["per_class_IoU"], expected)
    assert result["mIoU"] == pytest.approx(np.mean(expected))


def test_absent_class_is_none_and_excluded_from_mean():
    labels = np.array([[[0, 0], [1, 1]]])
    preds = np.array([[[0, 1], [1, 1]]])
    metric = MeanIoU(3)
    metric.update(labels, preds)
    result = metric.result()
    assert result["per_class_IoU"] == [pytest.approx(0.5), pytest.approx(2 / 3), None]
    assert result["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_out_of_range_values_raise():
    metric = MeanIoU(3)
    with pytest.raises(ValueError, match="label values"):
        metric.update(np.array([[[0, 7]]]), np.array([[[0, 1]]]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))
