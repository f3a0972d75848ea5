"""Runs a model over an evaluation dataset and computes the task's metrics.

Detection is scored against the dataset's own annotations wherever there are some:

    annotation_file = evaluator.ground_truth_for(config.dataset.name, split, data_dir=...)
    originals = sources.load(config.dataset.name, split, data_dir=...)   # canonical examples
    metrics, kept = evaluator.evaluate(model, eval_batches, task, num_classes,
                                       annotation_file=annotation_file, originals=originals,
                                       detections_file=os.path.join(workdir, "detections.json"))

- With an `annotation_file` (COCO sources: the user's `coco_json:` JSON, or one written from
  TFDS `coco/*`), pycocotools runs on that file as is: crowd regions, annotation areas and
  every box count exactly as when a user runs pycocotools by hand on `detections.json`.
- Otherwise, with `originals` (the canonical examples in the order of the batches), the ground
  truth is every box of each example at original resolution.
- Otherwise (legacy), it is rebuilt from the batches; boxes lost to resizing or `max_boxes`
  are then missing, so prefer one of the above.

Detections are mapped from model input pixels back to original pixels with each batch's
`image_info` and clipped to the original image. Segmentation mIoU is computed at the original
resolution (the VOC protocol) when `originals` are given: logits are cropped to the resized
image inside the padded input and resized back bilinearly; the model-resolution number is
kept as `mIoU_model_resolution`.

With a GPU or TPU the model runs one batch ahead of the per-image bookkeeping (mapping boxes
back, matching, resizing masks): while Python handles batch k, batch k+1's forward pass runs
from a worker thread, so the host's work hides behind the device's. On a CPU, where the model
already keeps every core busy, the loop is sequential (measured on the 2-core CPU: the same
rate both ways; not measured on an accelerator, none was lent: experiments/bench/
ACCELERATOR.md, `evaluation_parts.py --ab_rounds`). Batches are handled in order either way,
so the numbers are the same.
"""

import concurrent.futures
import logging
import time

import numpy as np
import tensorflow as tf

from rethink_tf.data import coco_annotations
from rethink_tf.data import example as ex
from rethink_tf.evaluation import coco_ap
from rethink_tf.evaluation import miou as miou_lib

PRIMARY_METRIC = {"detection": "AP", "segmentation": "mIoU", "classification": "top1"}
MASK_RESOLUTIONS = ("original", "model")


def ground_truth_for(dataset_name, split, data_dir=None, cache_dir=None):
    """The COCO annotation JSON to evaluate a detection source against, or None.

    Args:
        dataset_name: a source name (`coco/2017`, `coco_json:<ann.json>:<image_dir>`, ...).
        split: the evaluation split (`all` for `coco_json:`).
        data_dir: the TFDS data dir (TFDS names only).
        cache_dir: where a JSON written from TFDS is cached (default: next to the TFDS data).

    Returns:
        A local JSON path for `coco_json:` sources and TFDS COCO datasets (written once, with
        crowd flags, areas and every box); None for other sources, whose ground truth then
        comes from `evaluate(..., originals=...)`.
    """
    return coco_annotations.annotation_file_for(dataset_name, split, data_dir=data_dir,
                                                cache_dir=cache_dir)


def to_original_pixels(boxes, image_info, num_detections=None):
    """Maps xyxy boxes at model resolution [B, N, 4] back to original image pixels.

    Args:
        boxes: [B, N, 4] xyxy at the model input's resolution.
        image_info: [B, 4, 2] (original size, output size, scale, offset) per image.
        num_detections: optional [B]; rows at or past it are padding and come back as -1.
            Without it every row is mapped (a real box may have a negative coordinate, so
            coordinates cannot tell padding apart); callers skip padding themselves.

    Returns:
        float32 [B, N, 4] in original pixels.
    """
    boxes = np.asarray(boxes, np.float32)
    info = np.asarray(image_info, np.float32)
    scale = info[:, 2]  # [B, 2] = (y_scale, x_scale)
    offset = info[:, 3]  # [B, 2] = (y_offset, x_offset), zero at evaluation
    xyxy_scale = np.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], -1)[:, None]
    xyxy_offset = np.stack([offset[:, 1], offset[:, 0], offset[:, 1], offset[:, 0]], -1)[:, None]
    out = (boxes + xyxy_offset) / xyxy_scale
    if num_detections is None:
        return out
    rows = np.arange(boxes.shape[1])[None, :]
    valid = rows < np.asarray(num_detections).reshape(-1, 1)
    return np.where(valid[..., None], out, np.float32(-1.0))


def logits_to_original(logits, image_info, input_size):
    """Crops one image's logits to the resized image and resizes them to the original size.

    Args:
        logits: [h, w, C] model output (any resolution proportional to the input).
        image_info: [4, 2] the example's image_info (offset must be zero: no crop).
        input_size: (height, width) of the model input the logits came from.

    Returns:
        float32 [orig_h, orig_w, C] logits at the original resolution.
    """
    info = np.asarray(image_info, np.float64)
    if np.any(info[3] != 0):
        raise ValueError(f"image_info offset {info[3].tolist()} is not zero: evaluation "
                         "batches must be resized and padded, not cropped")
    orig = np.round(info[0]).astype(int)
    # As the pipeline does: the resized image is round(orig * scale) at the input's top left.
    scaled = np.minimum(np.round(info[0] * info[2]), info[1])
    logits = tf.convert_to_tensor(logits, tf.float32)
    factor = np.array([int(logits.shape[0]) / input_size[0],
                       int(logits.shape[1]) / input_size[1]])
    valid = np.maximum(np.round(scaled * factor).astype(int), 1)
    cropped = logits[:valid[0], :valid[1]]
    return tf.image.resize(cropped, (int(orig[0]), int(orig[1])), method="bilinear")


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


def _as_text(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    return value.decode() if isinstance(value, bytes) else str(value)


class _Originals:
    """Canonical examples consumed in step with the batches, checked by source_id."""

    def __init__(self, originals):
        self._iterator = iter(originals)

    def take(self, source_ids):
        out = []
        for source_id in source_ids:
            try:
                example = next(self._iterator)
            except StopIteration:
                raise ValueError(f"originals ran out before the evaluation batches "
                                 f"(at source_id {source_id!r})") from None
            got = _as_text(example[ex.SOURCE_ID])
            if got != source_id:
                raise ValueError(f"originals are not in the order of the evaluation batches: "
                                 f"expected source_id {source_id!r}, got {got!r}; load them "
                                 "from the same source and split, unshuffled")
            out.append({k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v))
                        for k, v in example.items() if k != ex.IMAGE})
        return out


def evaluate(model, dataset, task, num_classes, *, class_names=None, num_images=0,
             keep_examples=0, predict_fn=None, annotation_file=None, category_ids=None,
             originals=None, mask_resolution=None, detections_file=None):
    """Evaluates `model` on batches from `pipelines.build_dataset(..., training=False)`.

    Args:
      model: a detector, segmenter or classifier.
      dataset: batched eval dataset (dicts with images, targets, source_id, image_info).
      task: detection | segmentation | classification.
      num_classes: classes of the task.
      class_names: names for per-class results (default with an annotation file: its names).
      num_images: stop after this many images (0 = all).
      keep_examples: return the first k (image, prediction, target) for visualisation.
      predict_fn: optional precompiled `make_predict_fn(model, task)`.
      annotation_file: detection: a COCO JSON (see `ground_truth_for`) whose image ids are
        the batches' source_ids; the ground truth then comes from it alone.
      category_ids: detection: contiguous class id -> the JSON's category id (default: the
        JSON's sorted ids, which is what `sources.info(name).category_ids` gives for COCO).
      originals: canonical examples (`sources.load(name, split)`, unshuffled) in the order of
        the batches' examples; detection without an annotation file takes every box from
        them at original resolution, segmentation scores their masks at original resolution.
      mask_resolution: segmentation: "original" (needs `originals`) or "model"; default
        "original" when `originals` are given, else "model".
      detections_file: detection: also write the detections (original pixels, the JSON's
        ids) as a COCO results JSON here; pycocotools on it and the annotation file gives
        the same numbers.

    Returns:
      (metrics dict, list of kept examples). Metrics include `num_images` and `images_per_s`;
      segmentation at original resolution adds `mIoU_model_resolution`.
    """
    if mask_resolution is None:
        mask_resolution = "original" if originals is not None else "model"
    if mask_resolution not in MASK_RESOLUTIONS:
        raise ValueError(f"mask_resolution must be one of {MASK_RESOLUTIONS}, got "
                         f"{mask_resolution!r}")
    if task == "segmentation" and mask_resolution == "original" and originals is None:
        raise ValueError("mask_resolution='original' needs `originals` (the canonical "
                         "examples with their original masks)")
    if annotation_file is not None and task != "detection":
        raise ValueError(f"annotation_file is for detection, not {task!r}")
    predict = predict_fn or make_predict_fn(model, task)
    needs_originals = originals is not None and (
        (task == "detection" and annotation_file is None)
        or (task == "segmentation" and mask_resolution == "original"))
    stream = _Originals(originals) if needs_originals else None
    if task == "detection":
        metric = coco_ap.CocoDetectionEvaluator(
            num_classes=num_classes, class_names=class_names, annotation_file=annotation_file,
            category_ids=category_ids)
        if annotation_file is None and stream is None:
            logging.warning("detection ground truth rebuilt from resized batches: boxes under "
                            "a pixel or past max_boxes are lost; pass annotation_file or "
                            "originals")
    elif task == "segmentation":
        metric = miou_lib.MeanIoU(num_classes)
        model_metric = miou_lib.MeanIoU(num_classes) if mask_resolution == "original" else None
    else:
        correct = 0
    seen, kept, start = 0, [], time.time()
    for batch, preds in predicted_batches(dataset, predict, num_images):
        images = batch["images"]
        n = int(images.shape[0])
        source_ids = ([_as_text(s) for s in batch["source_id"].numpy()]
                      if "source_id" in batch else None)
        originals_batch = stream.take(source_ids) if stream is not None else None
        if task == "detection":
            targets = batch["bounding_boxes"]
            _update_detection(metric, batch, preds, source_ids, originals_batch,
                              annotation_file is not None)
        elif task == "segmentation":
            targets = batch["segmentation_masks"]
            if mask_resolution == "original":
                model_metric.update(targets, preds)
                info = batch["image_info"].numpy()
                input_size = tuple(int(s) for s in images.shape[1:3])
                for i in range(n):
                    logits = logits_to_original(preds[i], info[i], input_size)
                    mask = originals_batch[i][ex.MASK]
                    if mask.shape[:2] != tuple(logits.shape[:2]):
                        raise ValueError(f"source_id {source_ids[i]!r}: original mask "
                                         f"{mask.shape[:2]} != image_info size "
                                         f"{tuple(logits.shape[:2])}")
                    metric.update(mask[None], np.argmax(logits.numpy(), -1)[None])
            else:
                metric.update(targets, preds)
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
        if detections_file:
            metric.write_detections(detections_file)
    elif task == "segmentation":
        metrics = metric.result()
        if model_metric is not None:
            metrics["mIoU_model_resolution"] = model_metric.result()["mIoU"]
    else:
        metrics = {"top1": correct / seen}
    metrics["num_images"] = seen
    metrics["images_per_s"] = seen / elapsed
    return metrics, kept


def accelerator_present():
    """True when TensorFlow sees a GPU or TPU."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def predicted_batches(dataset, predict, num_images=0, ahead=None):
    """Yields (batch, its predictions as NumPy) in the dataset's order.

    With `ahead` (default: when a GPU or TPU is present) the forward pass of the next batch is
    submitted to a worker thread before the current batch is handed over, so the caller's
    per-image work on batch k overlaps the model on batch k+1; otherwise one after the other.
    Batches are cut so that at most `num_images` images are yielded (0 = all). An error in
    the model is raised here, at the batch it belongs to.
    """
    if ahead is None:
        ahead = accelerator_present()

    def batches():
        seen = 0
        for batch in dataset:
            if num_images:
                take = min(int(batch["images"].shape[0]), num_images - seen)
                if take <= 0:
                    return
                batch = tf.nest.map_structure(lambda t, k=take: t[:k], batch)
            seen += int(batch["images"].shape[0])
            yield batch

    def run(images):
        return tf.nest.map_structure(lambda t: t.numpy(), predict(images))

    if not ahead:
        for batch in batches():
            yield batch, run(batch["images"])
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="evaluate") as pool:
        pending = None
        for batch in batches():
            future = pool.submit(run, batch["images"])
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (batch, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def _update_detection(metric, batch, preds, source_ids, originals_batch, from_json):
    """Adds one batch's detections (original pixels) and, unless from a JSON, ground truth."""
    info = batch["image_info"].numpy()
    num = np.asarray(preds["num_detections"]).reshape(-1)
    boxes = to_original_pixels(preds["boxes"], info, num)
    if source_ids is None:
        if from_json:
            raise ValueError("evaluation batches need 'source_id' to match the annotation file")
        source_ids = [None] * len(num)
    if not from_json and originals_batch is None:
        gt = batch["bounding_boxes"]
        gt_classes = gt["classes"].numpy()
        gt_boxes = to_original_pixels(gt["boxes"].numpy(), info)
    for i, count in enumerate(num.astype(int)):
        height, width = (float(v) for v in info[i, 0])
        # Boxes reaching into the padding are cut at the original image's border.
        det_boxes = np.clip(boxes[i, :count], 0.0, [width, height, width, height])
        gt_b = gt_c = None
        if originals_batch is not None:
            gt_b, gt_c = originals_batch[i][ex.BOXES], originals_batch[i][ex.CLASSES]
        elif not from_json:
            gt_b, gt_c = gt_boxes[i], gt_classes[i]
        key = source_ids[i] if source_ids[i] is not None else f"__auto_{metric.num_images}"
        metric.add_image(key, gt_b, gt_c, det_boxes, preds["classes"][i, :count],
                         preds["confidence"][i, :count])
