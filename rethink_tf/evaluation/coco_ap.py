"""COCO box AP (pycocotools' protocol, scored by faster-coco-eval), fed batch by batch.

Ground truth is either built from the dataset as images arrive (boxes in absolute xyxy pixels,
classes 0..C-1, rows with class -1 are padding) or read from an annotation JSON (the
dataset's own: crowds and areas as annotated), in which case contiguous class ids are mapped
back to the JSON's category ids and image ids must be the JSON's (or their strings, as
`source_id`s are). `write_detections` gives a COCO results file on which pycocotools run by
hand with the same JSON reproduces `result()` exactly.

    evaluator = CocoDetectionEvaluator(num_classes=10)
    for images, gt in eval_dataset:
        evaluator.update(gt, detector.predict_on_batch(images))
    metrics = evaluator.result()   # {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", ...}

Scoring runs pycocotools' COCOeval protocol in faster-coco-eval's C++ implementation
(`scorer="faster_coco_eval"`, the default): the same numbers as pycocotools (every metric
equal, the precision table within 1e-15; `tests/evaluation/test_coco_ap.py`), ~7x faster
(1,000 images with 99 detections each: 3.8 -> 0.5 s; experiments/bench/ACCELERATOR.md).
`scorer="pycocotools"` runs pycocotools itself.

Metrics are in [0, 1]; pycocotools reports -1 for an undefined value (no ground truth in that
area range, or none at all), and so do we. Keep the decoder's score threshold low (0.05) for
evaluation: AP integrates over the low-score tail, and a high threshold is a classic cause of
"AP is 0 on my dataset".
"""

import contextlib
import io
import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rethink_tf.data import atomic

SCORERS = ("faster_coco_eval", "pycocotools")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _numpy(value):
    if value is None:
        return None
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _xyxy_to_xywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _quiet_coco(dataset):
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_category_ids(annotation_file):
    """Category ids of a COCO annotation JSON, sorted: index = contiguous class id.

    This is the mapping TFDS `coco/2017` labels follow (80 contiguous ids over COCO's 1..90).
    """
    with open(annotation_file) as f:
        categories = json.load(f)["categories"]
    return sorted(int(c["id"]) for c in categories)


class CocoDetectionEvaluator:
    """Streaming COCO box evaluation.

    Args:
        num_classes: number of contiguous classes (ignored with `annotation_file`).
        class_names: optional names for the per-class AP keys (default: the class ids).
        annotation_file: optional official COCO annotation JSON used as ground truth;
            then `update` takes no ground truth and `image_ids` are required.
        category_ids: contiguous class id -> original category id; defaults to
            `coco_category_ids(annotation_file)` with a JSON, else the identity.
        scorer: "faster_coco_eval" (pycocotools' protocol in C++, same numbers) or
            "pycocotools".
    """

    def __init__(self, num_classes=None, class_names=None, annotation_file=None,
                 category_ids=None, scorer="faster_coco_eval"):
        if scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
        self.scorer = scorer
        self._annotation_file = annotation_file
        if annotation_file is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                self._gt_json = COCO(annotation_file)
            self.category_ids = list(category_ids or coco_category_ids(annotation_file))
            if not class_names:
                class_names = [self._gt_json.cats[cid]["name"] for cid in self.category_ids]
            self._json_ids = {str(i): i for i in self._gt_json.imgs}
        else:
            if num_classes is None:
                raise ValueError("CocoDetectionEvaluator needs num_classes when no "
                                 "annotation_file is given")
            self._gt_json = None
            self.category_ids = list(category_ids or range(num_classes))
        self.class_names = list(class_names) if class_names else [
            str(c) for c in range(len(self.category_ids))]
        self.summary_text = ""
        self.reset()

    def reset(self):
        """Forgets all images seen so far."""
        self._images = []
        self._gt_annotations = []
        self._detections = []
        self._image_index = {}

    @property
    def num_images(self):
        """Images added since `reset`."""
        return len(self._images)

    def _image_id(self, key):
        # Internal ids are ints (pycocotools needs them); keys may be source_id strings.
        if isinstance(key, bytes):
            key = key.decode()
        if self._gt_json is not None:
            # source_id is str(image id) for every COCO source; JSON ids may be int or str.
            image_id = self._json_ids.get(str(key))
            if image_id is None:
                raise ValueError(f"image id {key!r} is not in {self._annotation_file}")
            if image_id in self._image_index:
                raise ValueError(f"image id {key!r} was already evaluated")
            self._image_index[image_id] = image_id
            self._images.append({"id": image_id})
            return image_id
        if key in self._image_index:
            raise ValueError(f"image id {key!r} was already evaluated")
        image_id = len(self._images) + 1
        self._image_index[key] = image_id
        self._images.append({"id": image_id})
        return image_id

    def _category(self, class_id):
        class_id = int(class_id)
        if not 0 <= class_id < len(self.category_ids):
            raise ValueError(f"class id {class_id} outside [0, {len(self.category_ids)})")
        return self.category_ids[class_id]

    def add_image(self, key, gt_boxes=None, gt_classes=None, det_boxes=None,
                  det_classes=None, det_scores=None):
        """Adds one image: its ground truth (without an annotation file) and detections.

        Args:
            key: the image's id (int or source_id string; the JSON's id with an
                annotation file); unique.
            gt_boxes: float [M, 4] xyxy pixels; rows with class < 0 are skipped. Ignored
                (may be None) with an annotation file.
            gt_classes: [M] contiguous class ids.
            det_boxes: float [N, 4] xyxy pixels (only real detections, no padding).
            det_classes: [N] contiguous class ids; rows with class < 0 are skipped.
            det_scores: [N] confidences.

        Returns:
            The image id used in the COCO datasets (the JSON's id with an annotation file).
        """
        image_id = self._image_id(key)
        if self._gt_json is None and gt_boxes is not None:
            for box, cls in zip(np.asarray(gt_boxes).reshape(-1, 4),
                                np.asarray(gt_classes).reshape(-1)):
                if cls < 0:
                    continue
                xywh = _xyxy_to_xywh(box)
                self._gt_annotations.append({
                    "id": len(self._gt_annotations) + 1, "image_id": image_id,
                    "category_id": self._category(cls), "bbox": xywh,
                    "area": max(xywh[2], 0.0) * max(xywh[3], 0.0), "iscrowd": 0})
        if det_boxes is not None:
            for box, cls, score in zip(np.asarray(det_boxes).reshape(-1, 4),
                                       np.asarray(det_classes).reshape(-1),
                                       np.asarray(det_scores).reshape(-1)):
                if cls < 0:
                    continue
                xywh = _xyxy_to_xywh(box)
                # The fields pycocotools' loadRes adds, so a results file gives the same eval.
                self._detections.append({
                    "id": len(self._detections) + 1, "image_id": image_id,
                    "category_id": self._category(cls), "bbox": xywh, "score": float(score),
                    "area": xywh[2] * xywh[3], "iscrowd": 0})
        return image_id

    def update(self, ground_truth_batch, predictions_batch, image_ids=None):
        """Adds a batch of ground truth and decoded predictions.

        Args:
            ground_truth_batch: {"boxes": [B, M, 4] xyxy pixels, "classes": [B, M]}, -1 padded
                (arrays or tensors); None with `annotation_file`.
            predictions_batch: Keras-CV decoded predictions {"boxes": [B, N, 4] xyxy,
                "classes": [B, N], "confidence": [B, N], "num_detections": [B]}; rows past
                `num_detections` or with class -1 are padding.
            image_ids: optional [B] unique ids (ints or source_id strings); required with
                `annotation_file` (the JSON's image ids, or their strings). Default:
                consecutive numbers.
        """
        pred_boxes = _numpy(predictions_batch["boxes"])
        pred_classes = _numpy(predictions_batch["classes"])
        pred_scores = _numpy(predictions_batch["confidence"])
        num_dets = _numpy(predictions_batch.get("num_detections"))
        batch = pred_boxes.shape[0]
        gt_boxes = gt_classes = None
        if self._gt_json is not None:
            if image_ids is None:
                raise ValueError("image_ids (the annotation file's ids) are required when "
                                 "evaluating against an annotation_file")
        else:
            if ground_truth_batch is None:
                raise ValueError("ground_truth_batch is required without an annotation_file")
            gt_boxes = _numpy(ground_truth_batch["boxes"])
            gt_classes = _numpy(ground_truth_batch["classes"])
            if gt_boxes.shape[0] != batch:
                raise ValueError(f"ground truth batch {gt_boxes.shape[0]} != predictions "
                                 f"batch {batch}")
        image_ids = _numpy(image_ids)
        if image_ids is not None and len(image_ids) != batch:
            raise ValueError(f"{len(image_ids)} image_ids for a batch of {batch}")
        for i in range(batch):
            key = image_ids[i].item() if image_ids is not None else f"__auto_{len(self._images)}"
            count = int(num_dets[i]) if num_dets is not None else pred_boxes.shape[1]
            self.add_image(key,
                           None if gt_boxes is None else gt_boxes[i],
                           None if gt_classes is None else gt_classes[i],
                           pred_boxes[i, :count], pred_classes[i, :count],
                           pred_scores[i, :count])

    def detections(self):
        """The detections seen so far in COCO results format (a list of dicts).

        Each is {"image_id", "category_id", "bbox": [x, y, w, h] in original pixels,
        "score"}; with an annotation file, ids are the JSON's, so
        `COCO(annotation_file).loadRes(detections)` reproduces `result()`.
        """
        return [{k: d[k] for k in ("image_id", "category_id", "bbox", "score")}
                for d in self._detections]

    def write_detections(self, path):
        """Writes `detections()` as a COCO results JSON, atomically (temp + rename)."""
        return atomic.write_json(path, self.detections(), "COCO detections")

    def ground_truth_dataset(self):
        """The ground truth as a COCO dataset dict (the annotation file's, or the one built)."""
        return self._ground_truth().dataset

    def _ground_truth(self):
        if self._gt_json is not None:
            return self._gt_json
        categories = [{"id": cid, "name": name}
                      for cid, name in zip(self.category_ids, self.class_names)]
        return _quiet_coco({"images": list(self._images), "annotations": self._gt_annotations,
                            "categories": categories})

    def _run(self):
        coco_gt = self._ground_truth()
        dataset = {"images": list(self._images), "annotations": self._detections,
                   "categories": coco_gt.dataset["categories"]}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if self.scorer == "pycocotools":
                evaluator = COCOeval(coco_gt, _quiet_coco(dataset), iouType="bbox")
            else:
                # pylint: disable=g-import-not-at-top
                from faster_coco_eval import COCO as FastCOCO
                from faster_coco_eval import COCOeval_faster
                evaluator = COCOeval_faster(FastCOCO(coco_gt.dataset), FastCOCO(dataset),
                                            iouType="bbox", print_function=print)
            evaluator.params.imgIds = sorted(img["id"] for img in self._images)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        self.summary_text = out.getvalue()
        return evaluator

    def result(self, per_class=False):
        """Computes the COCO metrics over everything seen since `reset`.

        Args:
            per_class: also return "per_class_AP": {class name: AP or -1 if no ground truth}.

        Returns:
            A dict of floats: AP (IoU .50:.95), AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
            ARs, ARm, ARl; -1 where undefined. pycocotools' printed table is kept in
            `self.summary_text`.
        """
        if not self._images:
            raise ValueError("CocoDetectionEvaluator.result() called before any update()")
        evaluator = self._run()
        # faster-coco-eval's stats go on past pycocotools' 12 (extra summaries): the first 12
        # are pycocotools' own.
        metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}
        if per_class:
            # precision: [IoU thresholds, recall points, classes, area ranges, max dets].
            precision = evaluator.eval["precision"][:, :, :, 0, -1]
            column = {cid: k for k, cid in enumerate(evaluator.params.catIds)}
            per_class_ap = {}
            for name, cid in zip(self.class_names, self.category_ids):
                values = precision[:, :, column[cid]]
                values = values[values > -1]
                per_class_ap[name] = float(values.mean()) if values.size else -1.0
            metrics["per_class_AP"] = per_class_ap
        return metrics
