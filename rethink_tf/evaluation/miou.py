"""Mean IoU from a confusion matrix accumulated batch by batch (NumPy, any batch size).

Pixels whose ground truth is `ignore_label` (255) are dropped before counting, so they have no
effect at all. A class that appears neither in the ground truth nor in the predictions of
everything seen has an undefined IoU (0/0): it is reported as None in `per_class_IoU` and left
out of the mean, so evaluating a subset without some class does not pull mIoU down.
"""

import numpy as np

from rethink_tf.data.example import IGNORE_LABEL


def _numpy(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


class MeanIoU:
    """Confusion-matrix mIoU accumulator.

    Args:
        num_classes: number of classes (labels 0..num_classes-1, background included).
        ignore_label: ground-truth label excluded from every count.
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL):
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.reset()

    def reset(self):
        """Clears the confusion matrix."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, y_true, y_pred):
        """Adds a batch.

        Args:
            y_true: int labels [B, H, W, 1] or [B, H, W] (255 = ignore).
            y_pred: class ids of the same shape, or scores / logits [B, H, W, num_classes]
                (argmax is taken).

        Raises:
            ValueError: on shape mismatch, or on labels or predictions outside
                [0, num_classes) that are not the ignore label.
        """
        y_true = _numpy(y_true)
        y_pred = _numpy(y_pred)
        if y_true.ndim == 4 and y_true.shape[-1] == 1:
            y_true = y_true[..., 0]
        if y_pred.ndim == y_true.ndim + 1:
            y_pred = y_pred[..., 0] if y_pred.shape[-1] == 1 else np.argmax(y_pred, axis=-1)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"MeanIoU: labels {y_true.shape} and predictions {y_pred.shape} "
                             "differ in shape")
        y_true = y_true.astype(np.int64).ravel()
        y_pred = y_pred.astype(np.int64).ravel()
        keep = y_true != self.ignore_label
        y_true, y_pred = y_true[keep], y_pred[keep]
        for name, values in (("label", y_true), ("prediction", y_pred)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"MeanIoU: {name} values must be in [0, {self.num_classes}) "
                                 f"or {self.ignore_label}; got range [{values.min()}, "
                                 f"{values.max()}]")
        counts = np.bincount(y_true * self.num_classes + y_pred,
                             minlength=self.num_classes ** 2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

    def result(self):
        """Returns {"mIoU": float, "per_class_IoU": [float or None per class]}.

        IoU_c = TP / (TP + FP + FN) with rows = ground truth, columns = prediction; classes with
        TP + FP + FN = 0 are None and excluded from the mean (mIoU is 0.0 if every class is).
        """
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        present = union > 0
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        per_class = [float(v) if ok else None for v, ok in zip(iou, present)]
        miou = float(np.mean(iou[present])) if present.any() else 0.0
        return {"mIoU": miou, "per_class_IoU": per_class}
