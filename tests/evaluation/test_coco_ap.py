"""COCO AP evaluator: perfect, shifted, empty images, padding, official-JSON mode, silence."""

import json

import numpy as np
import pytest

from rethink_tf.evaluation import coco_ap

# One small (<32^2), one medium and one large (>96^2) box per image, classes 0..2.
GT_BOXES = np.array([[[2, 2, 22, 22], [30, 30, 90, 80], [0, 0, 120, 110], [-1, -1, -1, -1]],
                     [[10, 40, 30, 60], [50, 5, 120, 70], [5, 5, 125, 125], [-1, -1, -1, -1]]],
                    "float32")
GT_CLASSES = np.array([[0, 1, 2, -1], [1, 0, 2, -1]], "float32")


def _predictions(boxes, classes, scores=None, pad=3):
    """Keras-CV style decoded predictions with `pad` padding rows per image."""
    batch, n = classes.shape
    scores = np.full((batch, n), 0.9, "float32") if scores is None else scores
    return {
        "boxes": np.concatenate([boxes, -np.ones((batch, pad, 4), "float32")], 1),
        "classes": np.concatenate([classes, -np.ones((batch, pad), "float32")], 1),
        "confidence": np.concatenate([scores, -np.ones((batch, pad), "float32")], 1),
        "num_detections": np.full((batch,), n, "int32"),
    }


def _perfect():
    return _predictions(GT_BOXES[:, :3], GT_CLASSES[:, :3])


def test_perfect_predictions_give_ap_one():
    evaluator = coco_ap.CocoDetectionEvaluator(num_classes=3)
    evaluator.update({"boxes": GT_BOXES, "classes": GT_CLASSES}, _perfect())
    metrics = evaluator.result(per_class=True)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["per_class_AP"] == {"0": pytest.approx(1.0), "1": pytest.approx(1.0),
                                       "2": pytest.approx(1.0)}


def test_shifted_boxes_lower_ap():
    evaluator = coco_ap.CocoDetectionEvaluator(num_classes=3)
    shifted = GT_BOXES[:, :3] + np.array([6, 6, 6, 6], "float32")
    evaluator.update({"boxes": GT_BOXES, "classes": GT_CLASSES},
                     _predictions(shifted, GT_CLASSES[:, :3]))
    metrics = evaluator.result()
    assert 0.0 <= metrics["AP"] < 0.9
    assert metrics["AP75"] < 1.0


def test_empty_images_are_fine_and_false_positives_on_them_count():
    evaluator = coco_ap.CocoDetectionEvaluator(num_classes=3)
    evaluator.update({"boxes": GT_BOXES, "classes": GT_CLASSES}, _perfect())
    empty_gt = {"boxes": -np.ones((1, 4, 4), "float32"), "classes": -np.ones((1, 4), "float32")}
    evaluator.update(empty_gt, _predictions(np.zeros((1, 0, 4), "float32"),
                                            np.zeros((1, 0), "float32")))
    assert evaluator.result()["AP"] == pytest.approx(1.0)
    # A confident box on an image without objects is a false positive ranked first.
    evaluator.update(empty_gt, _predictions(np.array([[[0, 0, 50, 50]]], "float32"),
                                            np.array([[1]], "float32"),
                                            np.array([[0.99]], "float32")))
    assert evaluator.result()["AP"] < 1.0


def test_no_predictions_at_all_gives_zero_ap():
    evaluator = coco_ap.CocoDetectionEvaluator(num_classes=3)
    evaluator.update({"boxes": GT_BOXES, "classes": GT_CLASSES},
                     _predictions(np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "float32")))
    assert evaluator.result()["AP"] == 0.0


def test_string_image_ids_must_be_unique():
    evaluator = coco_ap.CocoDetectionEvaluator(num_classes=3)
    gt = {"boxes": GT_BOXES, "classes": GT_CLASSES}
    evaluator.update(gt, _perfect(), image_ids=np.array([b"scene_1", b"scene_2"]))
    with pytest.raises(ValueError, match="already evaluated"):
        evaluator.update(gt, _perfect(), image_ids=[b"scene_2", b"scene_3"])


def test_pycocotools_output_is_silenced(capsys):
    evaluator = coco_ap.CocoDetectionEvaluator(num_classes=3)
    evaluator.update({"boxes": GT_BOXES, "classes": GT_CLASSES}, _perfect())
    evaluator.result()
    assert capsys.readouterr().out == ""
    assert "Average Precision" in evaluator.summary_text


def _write_annotation_file(path):
    # Non-contiguous category ids, as in COCO (contiguous class k -> sorted ids[k]).
    category_ids = [1, 3, 7]
    anns = []
    for image_index, image_id in enumerate([42, 99]):
        for box, cls in zip(GT_BOXES[image_index, :3], GT_CLASSES[image_index, :3]):
            x1, y1, x2, y2 = box.tolist()
            anns.append({"id": len(anns) + 1, "image_id": image_id,
                         "category_id": category_ids[int(cls)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    data = {"images": [{"id": 42, "width": 128, "height": 128},
                       {"id": 99, "width": 128, "height": 128},
                       {"id": 7, "width": 128, "height": 128}],
            "annotations": anns,
            "categories": [{"id": c, "name": f"cat{c}"} for c in category_ids]}
    path.write_text(json.dumps(data))
    return str(path)


def test_official_annotation_file_with_category_mapping(tmp_path, capsys):
    annotation_file = _write_annotation_file(tmp_path / "instances.json")
    assert coco_ap.coco_category_ids(annotation_file) == [1, 3, 7]
    evaluator = coco_ap.CocoDetectionEvaluator(annotation_file=annotation_file)
    # Only images 42 and 99 are evaluated; image 7 of the JSON is not part of this subset.
    evaluator.update(None, _perfect(), image_ids=[42, 99])
    metrics = evaluator.result(per_class=True)
    assert metrics["AP"] == pytest.approx(1.0)
    assert set(metrics["per_class_AP"]) == {"cat1", "cat3", "cat7"}
    # Without the mapping, contiguous ids hit the wrong categories.
    wrong = coco_ap.CocoDetectionEvaluator(annotation_file=annotation_file,
                                           category_ids=[7, 3, 1])
    wrong.update(None, _perfect(), image_ids=[42, 99])
    assert wrong.result()["AP"] < 0.5
    with pytest.raises(ValueError, match="not in"):
        evaluator.update(None, _perfect(), image_ids=[1000, 1001])
    assert capsys.readouterr().out == ""


def _random_scene(rng, image_id, num_classes):
    """A COCO image with 0-8 boxes of every size (some crowd) and noisy detections."""
    gt, dets = [], []
    for _ in range(rng.randint(0, 9)):
        w, h = rng.uniform(4, 150, 2)
        x, y = rng.uniform(0, 200, 2)
        gt.append({"bbox": [x, y, w, h], "category_id": int(rng.randint(num_classes)) + 1,
                   "iscrowd": int(rng.rand() < 0.1)})
        for _ in range(rng.randint(0, 4)):  # near-duplicates, shifted, other classes
            jitter = rng.normal(0, 0.15 * min(w, h), 4)
            dets.append({"bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0),
                                  max(h + jitter[3], 1.0)],
                         "category_id": int(rng.randint(num_classes)) + 1
                         if rng.rand() < 0.3 else gt[-1]["category_id"],
                         "score": float(rng.rand())})
    for _ in range(rng.randint(0, 6)):  # false positives
        dets.append({"bbox": [*rng.uniform(0, 200, 2), *rng.uniform(2, 100, 2)],
                     "category_id": int(rng.randint(num_classes)) + 1,
                     "score": float(rng.rand())})
    for ann in gt + dets:
        ann["image_id"] = image_id
    return gt, dets


def test_faster_coco_eval_scores_exactly_as_pycocotools(tmp_path):
    """The default scorer (pycocotools' protocol in C++) against pycocotools itself on 60
    random images with crowds, every area range, duplicates and false positives: every
    metric and per-class AP equal, the precision table within 1e-12."""
    rng = np.random.RandomState(0)
    num_classes = 4
    images, annotations, detections = [], [], []
    for image_id in range(1, 61):
        gt, dets = _random_scene(rng, image_id, num_classes)
        images.append({"id": image_id, "width": 256, "height": 256})
        for ann in gt:
            x, y, w, h = ann["bbox"]
            annotations.append({**ann, "id": len(annotations) + 1, "area": w * h})
        detections.append(dets)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]}))
    results = {}
    for scorer in coco_ap.SCORERS:
        evaluator = coco_ap.CocoDetectionEvaluator(annotation_file=str(path), scorer=scorer)
        for image_id, dets in enumerate(detections, 1):
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in
                              (d["bbox"] for d in dets)], "float32").reshape(-1, 4)
            evaluator.add_image(image_id, det_boxes=boxes,
                                det_classes=[d["category_id"] - 1 for d in dets],
                                det_scores=[d["score"] for d in dets])
        results[scorer] = (evaluator.result(per_class=True),
                           evaluator._run().eval["precision"])  # pylint: disable=protected-access
    (fast, fast_precision), (reference, ref_precision) = (results[s] for s in coco_ap.SCORERS)
    assert 0.05 < reference["AP"] < 0.95 and reference["APs"] > -1 and reference["APl"] > -1
    assert fast == reference
    np.testing.assert_allclose(fast_precision, ref_precision, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="scorer"):
        coco_ap.CocoDetectionEvaluator(num_classes=3, scorer="detectron2")
