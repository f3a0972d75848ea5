"""Tests for `coco_json:` sources (`rethink_tf.data.coco_json`)."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rethink_tf.data import coco_json
from rethink_tf.data import example as ex
from rethink_tf.data import image_folder
from rethink_tf.data import sources


def _write_dataset(root, annotations=None, categories=None, images=None, extra_files=()):
    """Writes a small COCO-format dataset; returns the `coco_json:` source name."""
    image_dir = root / "imgs"
    (image_dir / "sub").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((30, 40, 3), 100, np.uint8)).save(image_dir / "a.png")
    Image.fromarray(np.full((20, 10, 3), 50, np.uint8)).save(image_dir / "sub" / "b.jpg")
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(image_dir / "c.png")  # grayscale
    for name in extra_files:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image_dir / name)
    data = {
        "images": images if images is not None else [
            {"id": 11, "file_name": "a.png", "height": 30, "width": 40},
            {"id": 5, "file_name": "sub/b.jpg", "height": 20, "width": 10},
            {"id": 20, "file_name": "c.png"},  # no annotations, no size
        ],
        # Sparse, unsorted category ids: contiguous ids follow sorted id order (3, 7, 12).
        "categories": categories if categories is not None else [
            {"id": 12, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 11, "category_id": 12, "bbox": [2, 3, 10, 5], "iscrowd": 0,
             "area": 50, "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1,
             "area": 1200,
             "segmentation": {"size": [30, 40], "counts": [0, 30 * 40]}},
            {"id": 3, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0,
             "area": 12},
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [5, 15, 20, 20], "iscrowd": 0,
             "area": 400},  # extends past the 10x20 image: clipped
        ],
    }
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return f"coco_json:{path}:{image_dir}", str(path), str(image_dir)


def _by_id(ds):
    return {e["source_id"].decode(): e for e in tfds.as_numpy(ds)}


def test_boxes_classes_mapping_crowd_and_empty_images(tmp_path):
    name, ann, _ = _write_dataset(tmp_path)
    ds = sources.load(name, "all")
    ex.check_example_spec(ds.element_spec)
    assert set(ds.element_spec) == {"image", "boxes", "classes", "source_id"}
    got = _by_id(ds)
    assert sorted(got) == ["11", "20", "5"]
    # Crowd annotation 2 dropped; zebra (id 12) is contiguous class 2.
    np.testing.assert_allclose(got["11"]["boxes"], [[2, 3, 12, 8]])
    np.testing.assert_array_equal(got["11"]["classes"], [2])
    # dog (7) -> 1, cat (3) -> 0; the second box is clipped to the 10x20 image.
    np.testing.assert_allclose(got["5"]["boxes"], [[1, 2, 4, 6], [5, 15, 10, 20]])
    np.testing.assert_array_equal(got["5"]["classes"], [1, 0])
    assert got["20"]["boxes"].shape == (0, 4) and got["20"]["classes"].shape == (0,)
    assert got["20"]["image"].shape == (16, 16, 3)
    assert got["11"]["image"].shape == (30, 40, 3)
    assert coco_json.category_mapping(ann) == {3: 0, 7: 1, 12: 2}


def test_keep_crowd_keeps_crowd_boxes(tmp_path):
    name, _, _ = _write_dataset(tmp_path)
    got = _by_id(sources.load(name, "all", keep_crowd=True))
    np.testing.assert_allclose(got["11"]["boxes"], [[2, 3, 12, 8], [0, 0, 40, 30]])
    np.testing.assert_array_equal(got["11"]["classes"], [2, 0])


def test_info_gives_names_and_category_ids(tmp_path):
    name, _, _ = _write_dataset(tmp_path)
    info = sources.info(name)
    assert info.tasks == ("detection",) and info.splits == ("all",)
    assert info.num_classes["detection"] == 3
    assert info.class_names["detection"] == ("cat", "dog", "zebra")
    assert info.category_ids == (3, 7, 12)
    assert info.class_names["segmentation"] == ("background", "cat", "dog", "zebra")


def test_with_masks_paints_polygons_and_ignores_crowd(tmp_path):
    name, _, _ = _write_dataset(tmp_path)
    got = _by_id(sources.load(name, "all", with_masks=True))
    mask = got["11"]["mask"][..., 0]
    assert got["11"]["mask"].shape == (30, 40, 1)
    # The crowd RLE covers the whole image -> ignore, except the zebra polygon (class 2 + 1).
    assert mask[5, 7] == 3 and mask[20, 30] == ex.IGNORE_LABEL and mask[0, 39] == 255
    assert set(np.unique(mask)) == {3, 255}
    # No segmentation on image 5's annotations: all background.
    assert not got["5"]["mask"].any() and got["5"]["mask"].shape == (20, 10, 1)


def test_fraction_keeps_the_hash_subset(tmp_path):
    images = [{"id": i, "file_name": "a.png"} for i in range(200)]
    name, _, _ = _write_dataset(tmp_path, images=images, annotations=[])
    ids = [e["source_id"].decode() for e in tfds.as_numpy(
        sources.load(name, "all", fraction=0.3))]
    expected = [str(i) for i in range(200)
                if sources.in_fraction(str(i), 0.3).numpy()]
    assert ids == expected and 30 < len(ids) < 90


@pytest.mark.parametrize("change, error, match", [
    (dict(annotations=[{"id": 9, "image_id": 11, "category_id": 99, "bbox": [0, 0, 1, 1]}]),
     ValueError, r"annotation 9 \(image 11\): unknown category_id 99; categories are \[3, 7, 12\]"),
    (dict(annotations=[{"id": 9, "image_id": 11, "category_id": 3, "bbox": [0, 0, -1, 1]}]),
     ValueError, r"annotation 9 \(image 11\): bad bbox \[0, 0, -1, 1\]"),
    (dict(annotations=[{"id": 9, "image_id": 11, "category_id": 3, "bbox": [0, 0, 1]}]),
     ValueError, r"annotation 9 \(image 11\): bad bbox"),
    (dict(annotations=[{"id": 9, "image_id": 11, "category_id": 3, "bbox": [0, "x", 1, 1]}]),
     ValueError, r"bad bbox .*numbers"),
    (dict(annotations=[{"id": 9, "image_id": 404, "category_id": 3, "bbox": [0, 0, 1, 1]}]),
     ValueError, r"annotation 9: image_id 404 is not in 'images'"),
    (dict(images=[{"id": 1, "file_name": "missing.jpg"}], annotations=[]),
     FileNotFoundError, r"image id 1: file 'missing.jpg' not found"),
    (dict(categories=[]), ValueError, r"non-empty 'categories'"),
])
def test_bad_input_errors_name_what_is_wrong(tmp_path, change, error, match):
    name, ann, _ = _write_dataset(tmp_path, **change)
    with pytest.raises(error, match=match) as info:
        sources.load(name, "all")
    assert ann in str(info.value)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file .*nope.json"):
        sources.load(f"coco_json:{tmp_path}/nope.json:{tmp_path}", "all")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        sources.load(f"coco_json:{bad}:{tmp_path}", "all")
    _, ann, _ = _write_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="image directory"):
        sources.load(f"coco_json:{ann}:{tmp_path}/no_such_dir", "all")


def test_zero_size_boxes_are_dropped(tmp_path):
    anns = [{"id": 1, "image_id": 11, "category_id": 3, "bbox": [4, 4, 0, 5]},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [4, 4, 2, 5]}]
    name, _, _ = _write_dataset(tmp_path, annotations=anns)
    np.testing.assert_allclose(_by_id(sources.load(name, "all"))["11"]["boxes"], [[4, 4, 6, 9]])


def test_size_mismatch_fails_and_a_corrupt_image_is_skipped_and_counted(tmp_path):
    images = [{"id": 11, "file_name": "a.png", "height": 31, "width": 40}]
    name, _, _ = _write_dataset(tmp_path, images=images, annotations=[])
    with pytest.raises(Exception, match=r"image id 11: the JSON says 31x40 but .*a.png.* is 30x40"):
        list(sources.load(name, "all"))
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    images = [{"id": 3, "file_name": "broken.jpg"}, {"id": 4, "file_name": "a.png"}]
    _, ann, image_dir = _write_dataset(tmp_path, images=images, annotations=[])
    counter = image_folder.SkipCounter()
    got = [e["source_id"].numpy() for e in coco_json.load(ann, image_dir, skip_counter=counter)]
    assert got == [b"4"] and counter.count == 1
    assert "image id 3" in next(iter(counter.paths.values()))


def test_compressed_rle_masks_and_boxes_outside_the_image(tmp_path):
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
    pixels = np.zeros((16, 16), np.uint8)
    pixels[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(pixels))
    rle["counts"] = rle["counts"].decode("ascii")  # as COCO JSON stores it
    anns = [{"id": 1, "image_id": 20, "category_id": 7, "bbox": [3, 2, 6, 4],
             "segmentation": rle},
            {"id": 2, "image_id": 20, "category_id": 7, "bbox": [50, 50, 5, 5]}]
    name, _, _ = _write_dataset(tmp_path, annotations=anns)
    got = _by_id(sources.load(name, "all", with_masks=True))["20"]
    np.testing.assert_array_equal(got["mask"][..., 0], pixels * 2)  # dog: class 1 -> id 2
    # The second box lies wholly outside the 16x16 image: dropped, not a degenerate box.
    np.testing.assert_allclose(got["boxes"], [[3, 2, 9, 6]])
    np.testing.assert_array_equal(got["classes"], [1])
