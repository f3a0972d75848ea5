"""Detection AP against the original annotations equals pycocotools run by hand.

The fixture is a COCO-format set of PNGs of mixed sizes with crowd regions, annotation areas
that differ from box areas, boxes under a pixel after resizing to 64 px and one image with
more boxes than `max_boxes`: everything the batch-rebuilt ground truth used to get wrong.
"""

import contextlib
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rethink_tf.data import pipelines
from rethink_tf.data import sources
from rethink_tf.evaluation import coco_ap
from rethink_tf.evaluation import evaluator

IMAGE_SIZE = 64
MAX_BOXES = 100
CATEGORY_IDS = [3, 7, 12]  # sparse, as in COCO: contiguous class k -> CATEGORY_IDS[k]
# (height, width, number of ordinary boxes) per image.
IMAGES = [(480, 640, 12), (300, 200, 6), (427, 640, 130), (256, 256, 8), (120, 500, 5),
          (333, 333, 0)]


def _photo(rng, height, width):
    """A smooth colour field with noise: a stand-in for a photograph."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _random_box(rng, height, width, low, high):
    w = rng.uniform(low, high) * width
    h = rng.uniform(low, high) * height
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    return [float(x), float(y), float(w), float(h)]


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """Writes the images and annotation JSON; returns (source name, JSON path, detections).

    Detections are in original pixels and contiguous class ids, per image id:
    {"boxes" [N, 4] xyxy, "classes" [N], "scores" [N]}.
    """
    root = tmp_path_factory.mktemp("coco_set")
    (root / "images").mkdir()
    rng = np.random.RandomState(0)
    images, annotations, detections = [], [], {}
    for index, (height, width, count) in enumerate(IMAGES):
        image_id = 1000 + 7 * index
        name = f"img_{index}.png"
        Image.fromarray(_photo(rng, height, width)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        boxes = [(_random_box(rng, height, width, 0.03, 0.5), False) for _ in range(count)]
        if count:
            # Tiny boxes: 3-5 px, under one pixel once the image is resized to 64 px.
            boxes += [([float(rng.uniform(0, width - 6)), float(rng.uniform(0, height - 6)),
                        float(rng.uniform(3, 5)), float(rng.uniform(3, 5))], False)
                      for _ in range(3)]
            # Crowd regions: one annotation in six.
            boxes += [(_random_box(rng, height, width, 0.3, 0.6), True)
                      for _ in range(max(1, (count + 3) // 5))]
        det_boxes, det_classes, det_scores = [], [], []
        for (x, y, w, h), crowd in boxes:
            cls = int(rng.randint(3))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CATEGORY_IDS[cls], "bbox": [x, y, w, h],
                # Segmentation areas are smaller than box areas: APs/APm/APl depend on them.
                "area": float(w * h * rng.uniform(0.4, 0.9)), "iscrowd": int(crowd)})
            if crowd:
                # Detections on a crowd region: ignored by COCO, false positives otherwise.
                for _ in range(3):
                    det_boxes.append([x + rng.uniform(0, 0.4) * w, y + rng.uniform(0, 0.4) * h,
                                      x + rng.uniform(0.6, 1.0) * w,
                                      y + rng.uniform(0.6, 1.0) * h])
                    det_classes.append(cls)
                    det_scores.append(rng.uniform(0.3, 1.0))
            elif rng.uniform() < 0.85:
                jitter = rng.uniform(-0.12, 0.12, 4) * [w, h, w, h]
                box = np.array([x, y, x + w, y + h]) + jitter
                det_boxes.append(np.clip(box, 0, [width, height, width, height]).tolist())
                det_classes.append(cls if rng.uniform() < 0.9 else int((cls + 1) % 3))
                det_scores.append(rng.uniform(0.05, 1.0))
        for _ in range(4):  # false positives anywhere
            x, y, w, h = _random_box(rng, height, width, 0.05, 0.4)
            det_boxes.append([x, y, x + w, y + h])
            det_classes.append(int(rng.randint(3)))
            det_scores.append(rng.uniform(0.05, 0.8))
        order = np.argsort(-np.asarray(det_scores), kind="stable")[:MAX_BOXES]
        detections[str(image_id)] = {
            "boxes": np.asarray(det_boxes, np.float32).reshape(-1, 4)[order],
            "classes": np.asarray(det_classes, np.int32)[order],
            "scores": np.asarray(det_scores, np.float32)[order]}
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class_{c}"} for c in CATEGORY_IDS]}
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(data))
    name = f"coco_json:{annotation_file}:{root / 'images'}"
    return name, str(annotation_file), detections


def _eval_batches(name, batch_size=4):
    examples = sources.load(name, "all")
    model_examples = pipelines.preprocess(examples, "detection", image_size=IMAGE_SIZE,
                                          training=False, max_boxes=MAX_BOXES)
    return pipelines.batch(model_examples, batch_size, training=False)


def _replaying_predict_fn(batches, detections):
    """A predict_fn giving the fixture's detections at model resolution, batch by batch."""
    outputs = []
    for batch in batches:
        info = batch["image_info"].numpy()
        ids = [s.decode() for s in batch["source_id"].numpy()]
        size = max(len(detections[i]["scores"]) for i in ids)
        boxes = -np.ones((len(ids), size, 4), np.float32)
        classes = -np.ones((len(ids), size), np.float32)
        scores = -np.ones((len(ids), size), np.float32)
        for row, image_id in enumerate(ids):
            det = detections[image_id]
            k = len(det["scores"])
            y_scale, x_scale = info[row, 2]
            boxes[row, :k] = det["boxes"] * np.array([x_scale, y_scale, x_scale, y_scale])
            classes[row, :k], scores[row, :k] = det["classes"], det["scores"]
        outputs.append({"boxes": boxes, "classes": classes, "confidence": scores,
                        "num_detections": np.array([len(detections[i]["scores"]) for i in ids],
                                                   np.int32)})
    queue = iter(outputs)

    def predict(images):
        out = next(queue)
        assert out["boxes"].shape[0] == int(images.shape[0])
        return {k: tf.constant(v) for k, v in out.items()}

    return predict


def _pycocotools_by_hand(annotation_file, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file) if isinstance(annotation_file, str) else annotation_file
        dt = gt.loadRes(results)
        cocoeval = COCOeval(gt, dt, iouType="bbox")
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return dict(zip(coco_ap.METRIC_NAMES, cocoeval.stats))


def _assert_same(metrics, expected):
    for key in coco_ap.METRIC_NAMES:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key


def test_fixture_exercises_crowds_tiny_boxes_and_max_boxes(coco_set):
    name, annotation_file, _ = coco_set
    data = json.load(open(annotation_file))
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert crowd >= len(data["annotations"]) / 8
    per_image = {}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert max(per_image.values()) > MAX_BOXES
    # The batches lose boxes: tiny ones and those past max_boxes.
    batch_boxes = sum(int(np.sum(b["bounding_boxes"]["classes"].numpy() >= 0))
                      for b in _eval_batches(name))
    assert batch_boxes < len(data["annotations"]) - crowd


def test_evaluate_against_annotation_file_equals_pycocotools_by_hand(coco_set, tmp_path):
    name, annotation_file, detections = coco_set
    assert evaluator.ground_truth_for(name, "all") == annotation_file
    batches = _eval_batches(name)
    out = tmp_path / "detections.json"
    metrics, _ = evaluator.evaluate(
        None, batches, "detection", 3, annotation_file=annotation_file,
        category_ids=sources.info(name).category_ids,
        predict_fn=_replaying_predict_fn(batches, detections), detections_file=str(out))
    results = json.load(open(out))
    # The written detections are the fixture's, back in original pixels and original ids.
    assert len(results) == sum(len(d["scores"]) for d in detections.values())
    for image_id, det in detections.items():
        mine = [r for r in results if r["image_id"] == int(image_id)]
        xywh = np.array([r["bbox"] for r in mine]).reshape(-1, 4)
        np.testing.assert_allclose(xywh[:, :2], det["boxes"][:, :2], atol=1e-3)
        np.testing.assert_allclose(xywh[:, :2] + xywh[:, 2:], det["boxes"][:, 2:], atol=1e-3)
        assert [r["category_id"] for r in mine] == [CATEGORY_IDS[c] for c in det["classes"]]
    expected = _pycocotools_by_hand(annotation_file, results)
    _assert_same(metrics, expected)
    assert 0.1 < metrics["AP"] < 0.95
    # The old path (ground truth rebuilt from the resized batches) is measurably wrong.
    legacy, _ = evaluator.evaluate(None, batches, "detection", 3,
                                   predict_fn=_replaying_predict_fn(batches, detections))
    assert abs(legacy["AP"] - expected["AP"]) > 0.01


def test_evaluate_with_original_examples_keeps_every_box(coco_set):
    """Without an annotation file, ground truth is every box of the canonical examples."""
    name, annotation_file, detections = coco_set
    batches = _eval_batches(name)
    metrics, _ = evaluator.evaluate(
        None, batches, "detection", 3, originals=sources.load(name, "all"),
        predict_fn=_replaying_predict_fn(batches, detections))
    # What that ground truth is: the crowd-free boxes, with box areas, contiguous classes.
    data = json.load(open(annotation_file))
    annotations = [dict(a, area=a["bbox"][2] * a["bbox"][3])
                   for a in data["annotations"] if not a["iscrowd"]]
    index = {c: k for k, c in enumerate(CATEGORY_IDS)}
    for a in annotations:
        a["category_id"] = index[a["category_id"]]
    image_ids = {img["id"]: k + 1 for k, img in enumerate(data["images"])}
    for a in annotations:
        a["image_id"] = image_ids[a["image_id"]]
    gt = {"images": [{"id": k} for k in image_ids.values()], "annotations": annotations,
          "categories": [{"id": k, "name": str(k)} for k in range(3)]}
    results = [{"image_id": image_ids[int(i)], "category_id": int(c),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                "score": float(s)}
               for i, det in detections.items()
               for b, c, s in zip(det["boxes"], det["classes"], det["scores"])]
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    expected = _pycocotools_by_hand(coco, results)
    for key in coco_ap.METRIC_NAMES:
        # Boxes go to model resolution and back (float32): AP agrees to rounding.
        assert metrics[key] == pytest.approx(expected[key], abs=1e-4), key


def test_originals_out_of_order_fail_clearly(coco_set):
    name, _, detections = coco_set
    batches = _eval_batches(name)
    shuffled = sources.load(name, "all").skip(1)
    with pytest.raises(ValueError, match="not in the order"):
        evaluator.evaluate(None, batches, "detection", 3, originals=shuffled,
                           predict_fn=_replaying_predict_fn(batches, detections))


def test_tiny_detector_end_to_end_equals_pycocotools_on_its_detections(coco_set, tmp_path):
    from rethink_tf.models import detector as detector_lib  # pylint: disable=g-import-not-at-top
    name, annotation_file, _ = coco_set
    # A score threshold under the focal prior (0.01) so the untrained model detects things.
    model = detector_lib.build_detector(
        "resnet_tiny", 3, IMAGE_SIZE, max_level=5, anchor_sizes=(16.0, 32.0, 64.0),
        fpn_filters=8, head_filters=8, head_depth=1, score_threshold=0.001)
    out = tmp_path / "detections.json"
    metrics, _ = evaluator.evaluate(
        model, _eval_batches(name, batch_size=3), "detection", 3,
        annotation_file=evaluator.ground_truth_for(name, "all"), detections_file=str(out))
    results = json.load(open(out))
    assert results and metrics["num_images"] == len(IMAGES)
    assert {r["image_id"] for r in results} <= {1000 + 7 * i for i in range(len(IMAGES))}
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    _assert_same(metrics, _pycocotools_by_hand(annotation_file, results))


def test_to_original_pixels_masks_by_num_detections_not_sign():
    info = np.array([[[100, 200], [64, 64], [0.32, 0.32], [0, 0]]], np.float32)
    boxes = np.array([[[-0.32, 3.2, 32, 16], [-1, -1, -1, -1], [1, 1, 2, 2]]], np.float32)
    out = evaluator.to_original_pixels(boxes, info, num_detections=[1])
    # A real box with a negative coordinate is mapped, not taken for padding.
    np.testing.assert_allclose(out[0, 0], [-1, 10, 100, 50], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 1:], -1)
    # Without num_detections (the teacher's call) every row is mapped.
    np.testing.assert_allclose(evaluator.to_original_pixels(boxes, info)[0, 2],
                               [3.125, 3.125, 6.25, 6.25], rtol=1e-6)


def test_annotation_file_image_ids_are_matched_as_strings(coco_set):
    _, annotation_file, _ = coco_set
    metric = coco_ap.CocoDetectionEvaluator(annotation_file=annotation_file)
    metric.add_image(b"1000", det_boxes=np.zeros((0, 4)), det_classes=[], det_scores=[])
    metric.add_image(1007, det_boxes=np.zeros((0, 4)), det_classes=[], det_scores=[])
    with pytest.raises(ValueError, match="already evaluated"):
        metric.add_image("1007")
    with pytest.raises(ValueError, match="not in"):
        metric.add_image("12345")


def test_predicted_batches_runs_the_model_one_batch_ahead_in_order():
    import threading  # pylint: disable=g-import-not-at-top
    data = tf.data.Dataset.from_tensor_slices(
        {"images": tf.reshape(tf.range(10, dtype=tf.float32), [10, 1, 1, 1])}).batch(3)
    started = {k: threading.Event() for k in range(4)}

    def predict(images):
        first = int(images[0, 0, 0, 0])
        started[first // 3].set()
        return {"sum": tf.reduce_sum(images, [1, 2, 3]) * 2.0}

    got = []
    for batch, preds in evaluator.predicted_batches(data, predict, num_images=8, ahead=True):
        k = len(got)
        if k < 2:
            # While the caller holds batch k, the model is already on batch k + 1 (a
            # sequential loop would never start it: this wait would time out).
            assert started[k + 1].wait(timeout=20), f"batch {k + 1} not started"
        assert isinstance(preds["sum"], np.ndarray)
        got.append((batch["images"].numpy().reshape(-1).tolist(), preds["sum"].tolist()))
    # In order, and cut at num_images=8 (the third batch keeps 2 of its 3 images).
    assert got == [([0, 1, 2], [0, 2, 4]), ([3, 4, 5], [6, 8, 10]), ([6, 7], [12, 14])]
    assert not started[3].is_set()
    # Sequential (a CPU's default): the same batches and predictions.
    again = [(b["images"].numpy().reshape(-1).tolist(), p["sum"].tolist())
             for b, p in evaluator.predicted_batches(data, predict, num_images=8, ahead=False)]
    assert again == got


def test_predicted_batches_raises_the_models_error():
    data = tf.data.Dataset.from_tensor_slices({"images": tf.zeros([4, 1, 1, 1])}).batch(2)

    def predict(images):
        raise ValueError("the model failed")
    for ahead in (True, False):
        with pytest.raises(ValueError, match="the model failed"):
            list(evaluator.predicted_batches(data, predict, ahead=ahead))

