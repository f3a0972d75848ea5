"""How good are the pseudo labels? Measured against hidden ground truth, per threshold.

For a source whose unlabeled split keeps its ground truth (`digit_scenes/detection`,
`unlabeled`), `report` runs the teacher exactly as the labeler does but with a low score
threshold, and for each threshold t reports:

- detection: precision and recall of the boxes with score >= t (a box is a true positive
  when it matches an unmatched ground-truth box of its class with IoU >= 0.5, greedily by
  score), COCO AP / AP50 of those boxes (pycocotools), and boxes per image;
- segmentation: the fraction of pixels kept (top probability >= t), pixel accuracy and mIoU
  on the kept pixels, against the ground-truth mask (255 excluded);
- classification: the fraction of images kept (top probability >= t) and the accuracy of
  their hard labels against the ground-truth label.

So the threshold can be chosen by measurement. Without a teacher (`teacher=None`) the
records in `output_dir` are scored instead; they only hold boxes above the labeling threshold,
so lower thresholds are left out. The report goes to `output_dir/quality.json`, and score
histograms and boxes-per-image (detection) or mean confidence and kept fraction
(segmentation) of the records to TensorBoard under `output_dir/tb`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from rethink_tf.data import example as ex
from rethink_tf.pseudo import records

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
QUALITY_FILE = "quality.json"
MATCH_IOU = 0.5


def _iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    area = lambda b: np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def match_detections(boxes, classes, scores, gt_boxes, gt_classes, iou_threshold=MATCH_IOU):
    """Marks each predicted box as a true positive or not (greedy, by score, class-wise).

    Args:
        boxes: float [n, 4] xyxy predictions.
        classes: int [n].
        scores: float [n].
        gt_boxes: float [m, 4] xyxy ground truth.
        gt_classes: int [m].
        iou_threshold: the IoU a match needs.

    Returns:
        bool [n]: True where the box matched a ground-truth box (each matched at most once).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    classes, gt_classes = np.asarray(classes).reshape(-1), np.asarray(gt_classes).reshape(-1)
    taken = np.zeros(len(gt_boxes), bool)
    tp = np.zeros(len(boxes), bool)
    for i in np.argsort(-np.asarray(scores, np.float32).reshape(-1), kind="stable"):
        candidates = (gt_classes == classes[i]) & ~taken
        if not candidates.any():
            continue
        iou = np.where(candidates, _iou(boxes[i], gt_boxes), -1.0)
        best = int(np.argmax(iou))
        if iou[best] >= iou_threshold:
            taken[best] = True
            tp[i] = True
    return tp


class DetectionQuality:
    """Accumulates predictions and ground truth per image; `result()` scores each threshold.

    Args:
        num_classes: detection classes.
        thresholds: score thresholds to report.
        class_names: names for the COCO evaluator.
    """

    def __init__(self, num_classes, thresholds=DEFAULT_THRESHOLDS, class_names=None):
        self.num_classes = int(num_classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.class_names = class_names
        self._images = []

    def update(self, prediction, ground_truth):
        """Adds one image: prediction {boxes, classes, scores}, ground_truth {boxes, classes}."""
        self._images.append((
            {k: np.asarray(prediction[k]) for k in ("boxes", "classes", "scores")},
            {k: np.asarray(ground_truth[k]) for k in ("boxes", "classes")}))

    def result(self):
        """{"num_images", "num_ground_truth", "thresholds": [{threshold, precision, recall,
        AP, AP50, num_boxes, boxes_per_image}]}; precision is 1.0 when no box is kept."""
        from rethink_tf.evaluation import coco_ap  # pylint: disable=g-import-not-at-top
        num_gt = int(sum(len(g["classes"]) for _, g in self._images))
        rows = []
        for t in self.thresholds:
            tp = kept = 0
            evaluator = coco_ap.CocoDetectionEvaluator(num_classes=self.num_classes,
                                                       class_names=self.class_names)
            for pred, gt in self._images:
                keep = pred["scores"] >= t
                boxes = pred["boxes"].reshape(-1, 4)[keep]
                classes, scores = pred["classes"][keep], pred["scores"][keep]
                tp += int(match_detections(boxes, classes, scores, gt["boxes"],
                                           gt["classes"]).sum())
                kept += int(keep.sum())
                evaluator.update(
                    {"boxes": _padded(gt["boxes"].reshape(-1, 4)),
                     "classes": _padded(gt["classes"].reshape(-1, 1))[..., 0]},
                    {"boxes": _padded(boxes), "classes": _padded(classes.reshape(-1, 1))[..., 0],
                     "confidence": _padded(scores.reshape(-1, 1))[..., 0],
                     "num_detections": np.array([len(boxes)])})
            coco = evaluator.result() if self._images else {"AP": -1.0, "AP50": -1.0}
            rows.append({"threshold": t,
                         "precision": tp / kept if kept else 1.0,
                         "recall": tp / num_gt if num_gt else 1.0,
                         "AP": float(coco["AP"]), "AP50": float(coco["AP50"]),
                         "num_boxes": kept,
                         "boxes_per_image": kept / max(len(self._images), 1)})
        return {"num_images": len(self._images), "num_ground_truth": num_gt,
                "match_iou": MATCH_IOU, "thresholds": rows}


def _padded(rows):
    # One image as a batch of one, with a -1 row so empty images keep their shape.
    rows = np.asarray(rows, np.float32)
    pad = -np.ones((1,) + rows.shape[1:], np.float32)
    return np.concatenate([rows, pad], 0)[None]


class SegmentationQuality:
    """Per-threshold confusion matrices of the kept pixels against ground-truth masks.

    Args:
        num_classes: mask classes (background included).
        thresholds: top-probability thresholds to report (a pixel is kept at t when its
            confidence >= t).
    """

    def __init__(self, num_classes, thresholds=DEFAULT_THRESHOLDS):
        self.num_classes = int(num_classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self._confusion = np.zeros((len(self.thresholds), self.num_classes, self.num_classes),
                                   np.int64)
        self._kept = np.zeros(len(self.thresholds), np.int64)
        self._pixels = 0
        self._images = 0

    def update(self, mask, confidence, ground_truth):
        """Adds one image: predicted class ids [h, w], their confidence [h, w] and the ground
        truth [h, w] or [h, w, 1] (255 = ignore)."""
        gt = np.asarray(ground_truth).reshape(np.shape(mask)).astype(np.int64)
        pred = np.asarray(mask).astype(np.int64)
        confidence = np.asarray(confidence)
        valid = gt != ex.IGNORE_LABEL
        self._pixels += int(valid.sum())
        self._images += 1
        for i, t in enumerate(self.thresholds):
            keep = valid & (confidence >= t) & (pred != ex.IGNORE_LABEL)
            self._kept[i] += int(keep.sum())
            index = gt[keep] * self.num_classes + pred[keep]
            self._confusion[i] += np.bincount(index, minlength=self.num_classes ** 2).reshape(
                self.num_classes, self.num_classes)

    def result(self):
        """{"num_images", "num_pixels", "thresholds": [{threshold, kept_fraction,
        pixel_accuracy, mIoU}]} (accuracy and mIoU on the kept pixels; None if none kept)."""
        rows = []
        for i, t in enumerate(self.thresholds):
            confusion = self._confusion[i]
            kept = int(self._kept[i])
            tp = np.diag(confusion).astype(np.float64)
            union = confusion.sum(0) + confusion.sum(1) - tp
            present = union > 0
            rows.append({
                "threshold": t, "kept_fraction": kept / max(self._pixels, 1),
                "pixel_accuracy": float(tp.sum() / kept) if kept else None,
                "mIoU": float(np.mean(tp[present] / union[present])) if present.any() else None,
            })
        return {"num_images": self._images, "num_pixels": self._pixels, "thresholds": rows}


class ClassificationQuality:
    """Kept fraction and accuracy of hard pseudo labels (top class, kept when its probability
    is >= t), per threshold."""

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        self.thresholds = tuple(float(t) for t in thresholds)
        self._kept = np.zeros(len(self.thresholds), np.int64)
        self._correct = np.zeros(len(self.thresholds), np.int64)
        self._images = 0

    def update(self, label, score, ground_truth):
        """Adds one image: the predicted class, its probability and the true class."""
        self._images += 1
        for i, t in enumerate(self.thresholds):
            if score >= t:
                self._kept[i] += 1
                self._correct[i] += int(int(label) == int(ground_truth))

    def result(self):
        """{"num_images", "thresholds": [{threshold, kept_fraction, accuracy}]} (accuracy of
        the kept labels; None if none kept)."""
        rows = [{"threshold": t, "kept_fraction": int(k) / max(self._images, 1),
                 "accuracy": float(c / k) if k else None}
                for t, k, c in zip(self.thresholds, self._kept, self._correct)]
        return {"num_images": self._images, "thresholds": rows}


_GROUND_TRUTH = {"detection": (ex.BOXES, ex.CLASSES), "classification": (ex.LABEL,)}


def _ground_truth_stream(source, split, data_dir, task):
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    ds = sources.load(source, split, data_dir=data_dir)
    needed = _GROUND_TRUTH.get(task, (ex.MASK,))
    missing = [k for k in needed if k not in ds.element_spec]
    if missing:
        raise ValueError(f"{source!r} split {split!r} has no hidden ground truth {missing} to "
                         "measure pseudo labels against")
    return ds


def report(output_dir, source, split="unlabeled", *, teacher=None, data_dir=None,
           thresholds=DEFAULT_THRESHOLDS, max_images=None, flip_tta=None, batch_size=32):
    """Measures pseudo-label quality against a source's hidden ground truth.

    Args:
        output_dir: the pseudo-label directory (its records feed the TensorBoard histograms,
            and are scored when `teacher` is None); `quality.json` and `tb/` are written here.
        source: the source name holding the ground truth (e.g. `digit_scenes/detection`).
        split: its split.
        teacher: a `teacher.Teacher` or path: run it over the source with a low threshold
            (the labeler's other settings, e.g. flip TTA, from the manifest). None scores the
            records themselves.
        data_dir: TFDS data dir.
        thresholds: score (detection) or pixel-confidence (segmentation) thresholds.
        max_images: measure the first N images only (None = all).
        flip_tta: override the manifest's flip TTA setting.
        batch_size: teacher batch size.

    Returns:
        The report (also in `output_dir/quality.json`).
    """
    from rethink_tf.pseudo import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
    manifest = records.read_manifest(output_dir)
    task = manifest["task"]
    thresholds = tuple(sorted(float(t) for t in thresholds))
    gt = _ground_truth_stream(source, split, data_dir, task)
    if max_images:
        gt = gt.take(int(max_images))
    names = manifest.get("class_names")
    if teacher is None:
        # Records hold no box (pixel) below the labeling threshold: lower ones are left out.
        lowest = manifest.get("score_threshold") or manifest.get("pixel_threshold") or 0.0
        thresholds = tuple(t for t in thresholds if t >= lowest) or (float(lowest),)
        if task == "segmentation":
            thresholds = (float(lowest),)  # records keep no per-pixel confidence
    if task == "detection":
        metric = DetectionQuality(manifest["num_classes"], thresholds, names)
    elif task == "classification":
        metric = ClassificationQuality(thresholds)
    else:
        metric = SegmentationQuality(manifest["num_classes"], thresholds)
    if teacher is not None:
        if isinstance(teacher, (str, os.PathLike)):
            teacher = teacher_lib.load_teacher(os.fspath(teacher))
        if task == "detection":
            teacher.set_score_threshold(min(thresholds))
        tta = manifest.get("flip_tta", False) if flip_tta is None else flip_tta
        keys = _GROUND_TRUTH.get(task, (ex.MASK,))
        stream = teacher.predict_stream(gt, batch_size=batch_size, flip_tta=tta,
                                        passthrough=keys)
        for fields, prediction in stream:
            _update(metric, task, prediction, fields)
        scored_by = {"teacher": teacher.identity, "flip_tta": bool(tta)}
    else:
        labels = {}
        for e in records.load_pseudo_records(output_dir, task, allow_incomplete=True):
            labels[e[ex.SOURCE_ID].numpy()] = _record_prediction(e, task)
        for e in gt:
            prediction = labels.get(e[ex.SOURCE_ID].numpy())
            if prediction is None:
                continue  # dropped (drop_empty), unreadable or in a missing shard
            _update(metric, task, prediction, {k: v.numpy() for k, v in e.items()})
        scored_by = {"records": output_dir}
    result = {"task": task, "source": source, "split": split, "scored_by": scored_by,
              **metric.result()}
    records.write_json(os.path.join(output_dir, QUALITY_FILE), result)
    write_histograms(output_dir, result)
    return result


def _record_prediction(e, task):
    if task == "detection":
        return {"boxes": e[ex.BOXES].numpy(), "classes": e[ex.CLASSES].numpy(),
                "scores": e["scores"].numpy()}
    if task == "classification":
        return {"label": int(e[ex.LABEL]), "score": float(e["score"])}
    mask = e[ex.MASK].numpy()[..., 0]
    # A record keeps no per-pixel confidence: kept pixels count as confident (1.0).
    return {"mask": mask.astype(np.int64),
            "confidence": np.where(mask == ex.IGNORE_LABEL, 0.0, 1.0)}


def _update(metric, task, prediction, fields):
    if task == "detection":
        metric.update(prediction, {"boxes": fields[ex.BOXES], "classes": fields[ex.CLASSES]})
    elif task == "classification":
        metric.update(prediction["label"], prediction["score"], fields[ex.LABEL])
    else:
        metric.update(prediction["mask"], prediction["confidence"], fields[ex.MASK])


def write_histograms(output_dir, result=None):
    """Writes the records' score and boxes-per-image histograms (detection) or mean confidence
    and kept-fraction histograms (segmentation), and the quality curve, to `output_dir/tb`."""
    manifest = records.read_manifest(output_dir)
    task = manifest["task"]
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "tb"))
    values = {"a": [], "b": []}
    for e in records.load_pseudo_records(output_dir, task, allow_incomplete=True):
        if task == "detection":
            values["a"].extend(e["scores"].numpy().tolist())
            values["b"].append(int(tf.shape(e["scores"])[0]))
        elif task == "classification":
            values["a"].append(float(e["score"]))
            values["b"].append(int(e[ex.LABEL]))
        else:
            values["a"].append(float(e["mean_confidence"]))
            values["b"].append(float(e["kept_fraction"]))
    names = {"detection": ("pseudo/scores", "pseudo/boxes_per_image"),
             "classification": ("pseudo/scores", "pseudo/labels")}.get(
                 task, ("pseudo/mean_confidence", "pseudo/kept_fraction"))
    with writer.as_default():
        tf.summary.histogram(names[0], np.asarray(values["a"], np.float32), step=0)
        tf.summary.histogram(names[1], np.asarray(values["b"], np.float32), step=0)
        for row in (result or {}).get("thresholds", []):
            step = int(round(row["threshold"] * 100))  # the x axis is the threshold in %
            for key in ("precision", "recall", "AP", "AP50", "kept_fraction", "pixel_accuracy",
                        "mIoU", "accuracy"):
                if row.get(key) is not None:
                    tf.summary.scalar(f"quality/{key}", row[key], step=step)
    writer.flush()
    writer.close()
