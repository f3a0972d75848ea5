"""Runs a model over an evaluation dataset and computes the task's metrics.

Detection boxes (predicted and ground truth) are mapped back to the original image's pixels
with the batch's `image_info` before COCO evaluation, so APs/APm/APl use the original areas.
"""

import time

import numpy as np
import tensorflow as tf

from rethink_tf.evaluation import coco_ap
from rethink_tf.evaluation import miou as miou_lib

PRIMARY_METRIC = {"detection": "AP", "segmentation": "mIoU", "classification": "top1"}


def to_original_pixels(boxes, image_info):
    """Maps xyxy boxes at model resolution [B, N, 4] back to original pixels (-1 rows kept)."""
    boxes = np.asarray(boxes, np.float32)
    info = np.asarray(image_info, np.float32)
    scale = info[:, 2]  # [B, 2] = (y_scale, x_scale)
    offset = info[:, 3]  # [B, 2] = (y_offset, x_offset), zero at evaluation
    xyxy_scale = np.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], -1)[:, None]
    xyxy_offset = np.stack([offset[:, 1], offset[:, 0], offset[:, 1], offset[:, 0]], -1)[:, None]
    out = (boxes + xyxy_offset) / xyxy_scale
    return np.where(boxes < 0, boxes, out)


def make_predict_fn(model, task):
    """A compiled function `images -> predictions` (decoded boxes, logits or class scores)."""
    if task == "detection":
        from rethink_tf.models import detector  # pylint: disable=g-import-not-at-top

        @tf.function(reduce_retracing=True)
        def predict(images):
            return detector.decode_detections(model, model(images, training=False), images)
    else:
        @tf.function(reduce_retracing=True)
        def predict(images):
            return model(images, training=False)
    return predict


def evaluate(model, dataset, task, num_classes, *, class_names=None, num_images=0,
             keep_examples=0, predict_fn=None):
    """Evaluates `model` on batches from `pipelines.build_dataset(..., training=False)`.

    Args:
      model: a detector, segmenter or classifier.
      dataset: batched eval dataset (dicts with images, targets, source_id, image_info).
      task: detection | segmentation | classification.
      num_classes: classes of the task.
      class_names: names for per-class results.
      num_images: stop after this many images (0 = all).
      keep_examples: return the first k (image, prediction, target) for visualisation.
      predict_fn: optional precompiled `make_predict_fn(model, task)`.

    Returns:
      (metrics dict, list of kept examples). Metrics include `num_images` and `images_per_s`.
    """
    predict = predict_fn or make_predict_fn(model, task)
    if task == "detection":
        metric = coco_ap.CocoDetectionEvaluator(num_classes=num_classes, class_names=class_names)
    elif task == "segmentation":
        metric = miou_lib.MeanIoU(num_classes)
    else:
        correct = 0
    seen, kept, start = 0, [], time.time()
    for batch in dataset:
        images = batch["images"]
        if num_images:
            take = min(int(images.shape[0]), num_images - seen)
            if take <= 0:
                break
            batch = tf.nest.map_structure(lambda t, k=take: t[:k], batch)
            images = batch["images"]
        preds = predict(images)
        preds = tf.nest.map_structure(lambda t: t.numpy(), preds)
        n = int(images.shape[0])
        if task == "detection":
            gt = batch["bounding_boxes"]
            info = batch["image_info"].numpy()
            metric.update(
                {"boxes": to_original_pixels(gt["boxes"].numpy(), info),
                 "classes": gt["classes"].numpy()},
                {**preds, "boxes": to_original_pixels(preds["boxes"], info)},
                image_ids=[s.decode() for s in batch["source_id"].numpy()])
            targets = gt
        elif task == "segmentation":
            metric.update(batch["segmentation_masks"], preds)
            targets = batch["segmentation_masks"]
        else:
            correct += int(np.sum(np.argmax(preds, -1) == batch["labels"].numpy()))
            targets = batch["labels"]
        for i in range(n):
            if len(kept) >= keep_examples:
                break
            kept.append({
                "image": images[i].numpy(),
                "prediction": tf.nest.map_structure(lambda t, i=i: t[i], preds),
                "target": tf.nest.map_structure(lambda t, i=i: t[i].numpy(), targets),
            })
        seen += n
    elapsed = max(time.time() - start, 1e-9)
    if seen == 0:
        raise ValueError("evaluation dataset is empty")
    if task == "detection":
        metrics = metric.result(per_class=True)
    elif task == "segmentation":
        metrics = metric.result()
    else:
        metrics = {"top1": correct / seen}
    metrics["num_images"] = seen
    metrics["images_per_s"] = seen / elapsed
    return metrics, kept
