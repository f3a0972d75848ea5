"""Tests for `rethink_tf.data.sources`: TFDS converters, fraction, dispatch and errors."""
from etils import epath
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rethink_tf.data import example as ex
from rethink_tf.data import sources

from helpers import fixed_coco_as_dataset  # tests/helpers.py  # pylint: disable=g-bad-import-order


class SourcesTestGray(tfds.core.GeneratorBasedBuilder):
    """A tiny grayscale classification dataset with no id feature (tfds_id fallback)."""

    VERSION = tfds.core.Version("1.0.0")
    # This test module is not in a package, so TFDS cannot infer where metadata lives.
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((5 + i, 7, 1), 10 * i, np.uint8), "label": i % 3}


def _as_numpy(ds):
    return list(tfds.as_numpy(ds))


def _coco_fixed_examples():
    """Two COCO-like examples with known boxes and crowd flags."""
    return [
        {"image": np.zeros((40, 60, 3), np.uint8), "image/filename": "a.jpg",
         "image/id": np.int64(397133),
         "objects": {"id": np.array([1, 2, 3], np.int64), "area": np.array([5, 6, 7], np.int64),
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


_fixed_coco_as_dataset = fixed_coco_as_dataset(_coco_fixed_examples)


def test_coco_boxes_from_fixed_examples_exact_values_and_crowd_removed():
    with tfds.testing.mock_data(as_dataset_fn=_fixed_coco_as_dataset):
        ds = sources.load("coco/2017", "train")
        kept = sources.load("coco/2017", "train", keep_crowd=True)
        got, got_kept = _as_numpy(ds), _as_numpy(kept)
    ex.check_example_spec(ds.element_spec)
    first, second = got
    assert first["source_id"] == b"397133"
    # H=40, W=60: yxyx (0.1, 0.2, 0.5, 0.7) -> xyxy (12, 4, 42, 20); the crowd box is gone.
    np.testing.assert_allclose(first["boxes"], [[12, 4, 42, 20], [30, 10, 60, 30]], rtol=1e-6)
    np.testing.assert_array_equal(first["classes"], [0, 17])
    assert first["classes"].dtype == np.int32 and first["boxes"].dtype == np.float32
    assert second["boxes"].shape == (0, 4) and second["classes"].shape == (0,)
    assert second["source_id"] == b"7"
    np.testing.assert_allclose(got_kept[0]["boxes"][1], [0, 0, 60, 40])
    np.testing.assert_array_equal(got_kept[0]["classes"], [0, 79, 17])


def _coco_examples_with_a_nan_box():
    examples = _coco_fixed_examples()
    examples[0]["objects"]["bbox"][2, 1] = np.nan
    return examples


def test_a_non_finite_box_is_a_clear_error_naming_the_source_and_example():
    nan_box = fixed_coco_as_dataset(_coco_examples_with_a_nan_box)
    with tfds.testing.mock_data(as_dataset_fn=nan_box):
        ds = sources.load("coco/2017", "train")
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"(?s)source coco/2017 split train: example.*397133.*"
                                 r"non-finite coordinate"):
            _as_numpy(ds)


def test_coco_default_mock_data_matches_raw_examples():
    # Default mock data gives each objects/* field its own random length; the converter
    # uses the common prefix. Expectations are built from the raw mocked examples.
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = _as_numpy(tfds.load("coco/2017", split="validation"))
        got = _as_numpy(sources.load("coco/2017", "validation"))
    assert len(raw) == len(got) == 4
    saw_crowd = False
    for r, g in zip(raw, got):
        objects = r["objects"]
        n = min(len(objects["bbox"]), len(objects["label"]), len(objects["is_crowd"]))
        keep = ~objects["is_crowd"][:n]
        saw_crowd |= not keep.all()
        h, w = r["image"].shape[:2]
        b = objects["bbox"][:n][keep]
        expected = np.stack([np.minimum(b[:, 1], b[:, 3]) * w, np.minimum(b[:, 0], b[:, 2]) * h,
                             np.maximum(b[:, 1], b[:, 3]) * w, np.maximum(b[:, 0], b[:, 2]) * h],
                            axis=-1)
        np.testing.assert_allclose(g["boxes"], expected, rtol=1e-5)
        np.testing.assert_array_equal(g["classes"], objects["label"][:n][keep])
        np.testing.assert_array_equal(g["image"], r["image"])
        assert g["source_id"] == str(r["image/id"]).encode()
        assert set(g) == {"image", "boxes", "classes", "source_id"}
    assert saw_crowd  # the mocked data must exercise crowd removal


def test_coco_info_labels_are_contiguous_and_map_back_to_official_ids():
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):
        info = sources.info("coco/2017")
    assert info.tasks == ("detection",) and info.primary_task == "detection"
    assert info.num_classes == {"detection": 80}
    assert len(info.class_names["detection"]) == 80
    assert info.category_ids == sources.COCO_CATEGORY_IDS
    assert list(info.category_ids) == sorted(set(info.category_ids))
    assert set(range(1, 91)) - set(info.category_ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def test_imagenet_classification_examples_from_mock_data():
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = _as_numpy(tfds.load("imagenet2012", split="train"))
        ds = sources.load("imagenet2012", "train")
        got = _as_numpy(ds)
        info = sources.info("imagenet2012")
    assert set(ds.element_spec) == {"image", "label", "source_id"}
    for r, g in zip(raw, got):
        assert g["label"] == r["label"] and g["label"].dtype == np.int32
        assert g["source_id"] == r["file_name"]
        np.testing.assert_array_equal(g["image"], r["image"])
    assert info.tasks == ("classification",) and info.num_classes == {"classification": 1000}


def test_fraction_is_deterministic_nested_and_about_the_right_size():
    ids = tf.constant([f"img_{i:05d}.jpg" for i in range(2000)])
    half = sources.in_fraction(ids, 0.5).numpy()
    fifth = sources.in_fraction(ids, 0.2).numpy()
    np.testing.assert_array_equal(half, sources.in_fraction(ids, 0.5).numpy())
    assert not (fifth & ~half).any()  # 20% subset inside the 50% one
    assert 900 < half.sum() < 1100 and 340 < fifth.sum() < 460
    assert sources.in_fraction(ids, 1.0).numpy().all()
    # Pinned values: the same buckets on every machine (FarmHash Fingerprint64).
    np.testing.assert_array_equal(
        tf.strings.to_hash_bucket_fast(["abc", "train/000017"], 10000).numpy(), [1385, 9957])


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, True, "0.5", float("nan")])
def test_bad_fraction_names_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        sources.load("images:/nonexistent/*.png", "all", fraction=fraction)


def test_fraction_through_load_selects_the_hash_subset():
    with tfds.testing.mock_data(num_examples=120, policy=tfds.testing.MockPolicy.USE_CODE):
        all_ids = [e["source_id"] for e in _as_numpy(sources.load("imagenet2012", "train"))]
        half = [e["source_id"] for e in _as_numpy(
            sources.load("imagenet2012", "train", fraction=0.5))]
        fifth = [e["source_id"] for e in _as_numpy(
            sources.load("imagenet2012", "train", fraction=0.2))]
    expected = [i for i, k in zip(all_ids, sources.in_fraction(all_ids, 0.5).numpy()) if k]
    assert half == expected and 0 < len(half) < len(all_ids)
    assert set(fifth) <= set(half) and len(fifth) < len(half)


@pytest.fixture(scope="module")
def gray_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_gray"))
    tfds.builder("sources_test_gray", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_grayscale_to_rgb_and_tfds_id_fallback_is_stable_and_unique(gray_dir):
    ds = sources.load("sources_test_gray", "train", data_dir=gray_dir, shuffle_files=False)
    first, again = _as_numpy(ds), _as_numpy(
        sources.load("sources_test_gray", "train", data_dir=gray_dir))
    ex.check_example_spec(ds.element_spec)
    ids = [e["source_id"] for e in first]
    assert len(set(ids)) == 6 and ids == [e["source_id"] for e in again]
    assert all(i.startswith(b"sources_test_gray-train") for i in ids)
    for e in first:
        assert e["image"].shape[-1] == 3
        np.testing.assert_array_equal(e["image"][..., 0], e["image"][..., 2])
    assert sorted(e["label"] for e in first) == [0, 0, 1, 1, 2, 2]


def test_unknown_split_lists_available_splits(gray_dir):
    with pytest.raises(ValueError, match=r"no split 'valid'.*\['test', 'train'\]"):
        sources.load("sources_test_gray", "valid", data_dir=gray_dir)
    with pytest.raises(ValueError, match="no split 'nope'"):
        sources.load("sources_test_gray", "train+nope[:10%]", data_dir=gray_dir)
    assert len(_as_numpy(sources.load("sources_test_gray", "train[:50%]",
                                      data_dir=gray_dir))) == 3


def test_info_of_prepared_dataset_lists_splits(gray_dir):
    info = sources.info("sources_test_gray", data_dir=gray_dir)
    assert set(info.splits) == {"train", "test"}
    assert info.class_names == {"classification": ("a", "b", "c")}


def test_unknown_name_lists_the_forms():
    with pytest.raises(ValueError, match=r"unknown source 'coco_2017x'.*coco_json:.*images:"):
        sources.load("coco_2017x", "train")


def test_single_split_sources_reject_other_splits(tmp_path):
    with pytest.raises(ValueError, match=r"one split, 'all'"):
        sources.load(f"images:{tmp_path}/*.png", "train")


@pytest.mark.parametrize("name, expected", [
    ("coco_json:/a/b.json:/a/imgs", ("/a/b.json", "/a/imgs")),
    ("coco_json:C:\\d\\ann.json:D:\\imgs", ("C:\\d\\ann.json", "D:\\imgs")),
    ("coco_json:x.JSON:y:z", ("x.JSON", "y:z")),
])
def test_parse_coco_json_name(name, expected):
    assert sources.parse_coco_json_name(name) == expected


def test_parse_coco_json_name_rejects_malformed():
    with pytest.raises(ValueError, match="coco_json:<annotations.json>:<image_dir>"):
        sources.parse_coco_json_name("coco_json:/a/b.txt:/imgs")


@pytest.fixture(scope="module")
def digit_scenes_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_digits"))
    tfds.builder("digit_scenes/detection_tiny", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_digit_scenes_detection_emits_boxes_classes_mask(digit_scenes_dir):
    raw = _as_numpy(tfds.load("digit_scenes/detection_tiny", split="train",
                              data_dir=digit_scenes_dir))[:5]
    ds = sources.load("digit_scenes/detection_tiny", "train", data_dir=digit_scenes_dir)
    got = _as_numpy(ds.take(5))
    assert set(ds.element_spec) == {"image", "boxes", "classes", "mask", "source_id"}
    for r, g in zip(raw, got):
        assert g["source_id"] == r["image/filename"]
        b = r["objects"]["bbox"] * 128.0
        np.testing.assert_allclose(g["boxes"], b[:, [1, 0, 3, 2]], atol=1e-4)
        np.testing.assert_array_equal(g["classes"], r["objects"]["label"])
        np.testing.assert_array_equal(g["mask"], r["segmentation_mask"])
    info = sources.info("digit_scenes/detection_tiny", data_dir=digit_scenes_dir)
    assert info.tasks == ("detection", "segmentation")
    assert info.num_classes == {"detection": 10, "segmentation": 11}
    assert info.class_names["segmentation"][0] == "background"


def test_unknown_config_lists_the_configs():
    with pytest.raises(ValueError, match=r"configs of 'digit_scenes': \[.*'detection'.*\]"):
        sources.info("digit_scenes/nope")
