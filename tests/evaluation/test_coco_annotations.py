"""Annotation JSONs for evaluation: written from TFDS COCO, or the user's own (completed)."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rethink_tf.data import coco_annotations
from rethink_tf.data import sources
from rethink_tf.evaluation import evaluator

from helpers import fixed_coco_as_dataset  # tests/helpers.py  # pylint: disable=g-bad-import-order


def _coco_examples():
    return [
        {"image": np.zeros((40, 60, 3), np.uint8), "image/filename": "a.jpg",
         "image/id": np.int64(397133),
         "objects": {"id": np.array([11, 12, 13], np.int64),
                     "area": np.array([500, 2100, 7], np.int64),
                     "bbox": np.array([[0.1, 0.2, 0.5, 0.7], [0.0, 0.0, 1.0, 1.0],
                                       [0.25, 0.5, 0.75, 1.0]], np.float32),
                     "label": np.array([0, 79, 17], np.int64),
                     "is_crowd": np.array([False, True, False])}},
        {"image": np.zeros((20, 10, 3), np.uint8), "image/filename": "b.jpg",
         "image/id": np.int64(7),
         "objects": {"id": np.zeros((0,), np.int64), "area": np.zeros((0,), np.int64),
                     "bbox": np.zeros((0, 4), np.float32), "label": np.zeros((0,), np.int64),
                     "is_crowd": np.zeros((0,), bool)}},
    ]


_fixed_coco_as_dataset = fixed_coco_as_dataset(_coco_examples)


def test_tfds_coco_json_keeps_crowds_areas_and_official_ids(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_fixed_coco_as_dataset):
        path = evaluator.ground_truth_for("coco/2017", "validation", cache_dir=str(tmp_path))
        mtime = os.stat(path).st_mtime_ns
        # Written once: a second call finds the cached file.
        assert evaluator.ground_truth_for("coco/2017", "validation",
                                          cache_dir=str(tmp_path)) == path
        assert os.stat(path).st_mtime_ns == mtime
        source_ids = [e["source_id"].decode()
                      for e in tfds.as_numpy(sources.load("coco/2017", "validation"))]
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp files left
    data = json.load(open(path))
    assert [img["id"] for img in data["images"]] == [397133, 7]
    assert [img["source_id"] for img in data["images"]] == source_ids
    assert [(img["height"], img["width"]) for img in data["images"]] == [(40, 60), (20, 10)]
    assert [c["id"] for c in data["categories"]] == list(sources.COCO_CATEGORY_IDS)
    anns = data["annotations"]
    assert [a["image_id"] for a in anns] == [397133] * 3
    # Normalized yxyx (0.1, 0.2, 0.5, 0.7) on 40x60 -> xywh (12, 4, 30, 16).
    np.testing.assert_allclose(anns[0]["bbox"], [12, 4, 30, 16], rtol=1e-6)
    np.testing.assert_allclose(anns[1]["bbox"], [0, 0, 60, 40], rtol=1e-6)
    assert [a["area"] for a in anns] == [500, 2100, 7]
    assert [a["iscrowd"] for a in anns] == [0, 1, 0]
    assert [a["category_id"] for a in anns] == [1, 90, 19]  # labels 0, 79, 17
    assert len({a["id"] for a in anns}) == 3


def test_tfds_coco_from_default_mock_data_matches_raw_examples(tmp_path):
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = list(tfds.as_numpy(tfds.load("coco/2017", split="validation")))
        if len({int(r["image/id"]) for r in raw}) < len(raw):
            pytest.skip("mocked image ids collide")
        path = coco_annotations.write_tfds_coco_annotations(
            "coco/2017", "validation", str(tmp_path / "gt.json"))
    data = json.load(open(path))
    assert [img["id"] for img in data["images"]] == [int(r["image/id"]) for r in raw]
    expected = 0
    for r in raw:
        o = r["objects"]
        expected += min(len(o["bbox"]), len(o["label"]), len(o["is_crowd"]), len(o["area"]))
    assert len(data["annotations"]) == expected


def test_other_sources_have_no_annotation_file():
    assert evaluator.ground_truth_for("images:/nowhere/*.png", "all") is None


def test_user_json_is_used_as_is_or_completed(tmp_path):
    (tmp_path / "imgs").mkdir()
    full = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4],
                             "area": 9.0, "iscrowd": 1}],
            "categories": [{"id": 2, "name": "x"}]}
    (tmp_path / "full.json").write_text(json.dumps(full))
    name = f"coco_json:{tmp_path / 'full.json'}:{tmp_path / 'imgs'}"
    assert evaluator.ground_truth_for(name, "all") == str(tmp_path / "full.json")
    partial = dict(full, annotations=[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4]}])
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    name = f"coco_json:{tmp_path / 'partial.json'}:{tmp_path / 'imgs'}"
    path = evaluator.ground_truth_for(name, "all", cache_dir=str(tmp_path / "cache"))
    assert path.startswith(str(tmp_path / "cache"))
    (ann,) = json.load(open(path))["annotations"]
    assert ann["area"] == 12.0 and ann["iscrowd"] == 0 and ann["id"] == 1
