"""Corrupt image files are skipped and counted; bad COCO boxes fail early or are counted.

The `images:` and `coco_json:` sources read a folder holding good images and every kind of
bad file users have: truncated PNG and JPEG, an empty file, a text file named `.png`, a PNG
whose compressed pixels are damaged, a header claiming more pixels than PIL's limit (decoded
it would take 300 MB) and a decompression bomb. Each bad file is skipped and counted with its
reason, the good images come through unchanged, and a detector trains and evaluates on such a
COCO-format dataset without noticing. A COCO JSON with bad boxes fails before any example is
read, naming the file and the annotation id, or drops the box and counts it.
"""

import json
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rethink_tf.data import coco_json
from rethink_tf.data import image_folder
from rethink_tf.data import sources

GOOD = ("a.png", "b.jpg", "c.png", "d.png", "e.jpg", "f.png")
# The bad files and a word their skip reason must hold.
BAD = {"truncated.png": "truncated", "truncated.jpg": "truncated", "empty.jpg": "cannot identify",
       "notes.png": "cannot identify", "damaged.png": "broken data stream",
       "huge.png": "more than the limit", "bomb.png": "decompression bomb"}
SIZE = 64  # every good image is SIZE x SIZE


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header(width, height):
    """A PNG whose header claims width x height RGB pixels, with a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """GOOD images (random textures, one bright square each) and the BAD files."""
    root = tmp_path_factory.mktemp("corrupt") / "images"
    root.mkdir()
    rng = np.random.RandomState(0)
    for i, name in enumerate(GOOD):
        pixels = rng.randint(0, 120, (SIZE, SIZE, 3), np.uint8)
        pixels[8 + i:40 + i, 10:42] = 255
        Image.fromarray(pixels).save(root / name, quality=95)
    png = (root / "a.png").read_bytes()
    jpeg = (root / "b.jpg").read_bytes()
    (root / "truncated.png").write_bytes(png[:len(png) // 2])
    (root / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not an image\n")
    damaged = bytearray(png)
    start = damaged.index(b"IDAT") + 24
    damaged[start:start + 40] = bytes(b ^ 0xFF for b in damaged[start:start + 40])
    (root / "damaged.png").write_bytes(bytes(damaged))
    # 10,000 x 10,000 is above PIL.Image.MAX_IMAGE_PIXELS (89.5 M) but below the 2x at which
    # PIL itself refuses: image_files checks the header before decoding.
    (root / "huge.png").write_bytes(png_header(10_000, 10_000))
    (root / "bomb.png").write_bytes(png_header(30_000, 30_000))
    return root


def write_coco(folder, annotations=None, images=None, name="train.json"):
    """A COCO JSON over every file of `folder` (one box per image); returns its path."""
    files = sorted(GOOD + tuple(BAD))
    data = {
        "images": images if images is not None else [
            {"id": i + 1, "file_name": f, "height": SIZE, "width": SIZE}
            for i, f in enumerate(files)],
        "categories": [{"id": 1, "name": "square"}, {"id": 7, "name": "other"}],
        "annotations": annotations if annotations is not None else [
            {"id": 100 + i, "image_id": i + 1, "category_id": 1 + 6 * (i % 2),
             "bbox": [10, 8 + i % 6, 32, 32], "area": 1024.0, "iscrowd": 0}
            for i in range(len(files))],
    }
    path = folder.parent / name
    path.write_text(json.dumps(data))
    return str(path)


def _reasons(counter):
    return {os.path.basename(p): reason for p, reason in counter.paths.items()}


def test_images_source_skips_and_counts_every_bad_file(folder):
    counter = image_folder.SkipCounter()
    got = {e["source_id"].decode(): e["image"] for e in tfds.as_numpy(
        sources.load(f"images:{folder}/*", "all", skip_counter=counter))}
    assert sorted(got) == sorted(GOOD)
    assert all(image.shape == (SIZE, SIZE, 3) for image in got.values())
    reasons = _reasons(counter)
    assert sorted(reasons) == sorted(BAD) and counter.count == len(BAD)
    for name, word in BAD.items():
        assert word in reasons[name].lower(), (name, reasons[name])
    assert image_folder.count_unreadable(f"{folder}/*") == len(BAD)


def test_coco_json_skips_and_counts_undecodable_images(folder):
    annotation_file = write_coco(folder)
    counter = image_folder.SkipCounter()
    got = {e["source_id"].decode(): e for e in tfds.as_numpy(
        coco_json.load(annotation_file, str(folder), skip_counter=counter))}
    files = sorted(GOOD + tuple(BAD))
    ids = {f: str(i + 1) for i, f in enumerate(files)}
    assert sorted(got) == sorted(ids[f] for f in GOOD)
    for f in GOOD:
        i = files.index(f)
        np.testing.assert_allclose(got[ids[f]]["boxes"], [[10, 8 + i % 6, 42, 40 + i % 6]])
        assert got[ids[f]]["classes"].tolist() == [i % 2]
    reasons = _reasons(counter)
    assert sorted(reasons) == sorted(BAD)
    for name, word in BAD.items():
        # The reason names the JSON's image id, so the user finds the entry to fix.
        assert f"image id {int(ids[name])}" in reasons[name] and word in reasons[name].lower()


def test_sources_load_counts_coco_json_skips(folder):
    counter = image_folder.SkipCounter()
    name = f"coco_json:{write_coco(folder)}:{folder}"
    assert len(list(sources.load(name, "all", skip_counter=counter))) == len(GOOD)
    assert counter.count == len(BAD)


def _box(ann_id, bbox, image_id=1, category_id=1, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            **extra}


@pytest.mark.parametrize("annotation, match", [
    (_box(41, [5, 5, -3, 10]), r"annotation 41 \(image 1\): bad bbox .*width and height"),
    (_box(42, [5, 5, 10, float("nan")]), r"annotation 42 \(image 1\): bad bbox .*finite"),
    (_box(43, [5, 5, 10]), r"annotation 43 \(image 1\): bad bbox"),
    (_box(44, [5, 5, 10, 10], category_id=3), r"annotation 44 \(image 1\): unknown "
                                              r"category_id 3; categories are \[1, 7\]"),
    (_box(45, [5, 5, 10, 10], image_id=99), r"annotation 45: image_id 99 is not in 'images'"),
    (_box(46, [5, 5, 10, 10], area="big"), r"annotation 46 \(image 1\): bad area 'big'"),
])
def test_coco_json_bad_box_fails_before_reading_naming_file_and_annotation(
        folder, annotation, match):
    annotation_file = write_coco(folder, annotations=[annotation], name="bad.json")
    with pytest.raises(ValueError, match=match) as error:
        sources.load(f"coco_json:{annotation_file}:{folder}", "all")
    assert annotation_file in str(error.value)


def test_coco_json_bad_image_size_fails_naming_the_image(folder):
    images = [{"id": 5, "file_name": "a.png", "height": "tall", "width": SIZE}]
    annotation_file = write_coco(folder, annotations=[], images=images, name="size.json")
    with pytest.raises(ValueError, match=r"size.json: image id 5: bad height 'tall'"):
        sources.load(f"coco_json:{annotation_file}:{folder}", "all")


def test_coco_json_boxes_outside_the_image_are_dropped_and_counted(folder):
    inside = _box(1, [10, 10, 20, 20])
    partly = _box(2, [50, 50, 30, 30], category_id=7)  # clipped to the 64 x 64 image
    outside = [_box(3, [64, 10, 5, 5]), _box(4, [-20, 10, 20, 5]), _box(5, [10, 90, 5, 5])]
    zero = _box(6, [10, 10, 0, 5])
    annotation_file = write_coco(folder, annotations=[inside, partly, *outside, zero],
                                 name="outside.json")
    index = coco_json.read_index(annotation_file, str(folder))
    assert sorted(index.dropped_boxes) == [(3, "outside the image"), (4, "outside the image"),
                                           (5, "outside the image"), (6, "zero size")]
    example = next(e for e in tfds.as_numpy(sources.load(
        f"coco_json:{annotation_file}:{folder}", "all")) if e["source_id"] == b"1")
    np.testing.assert_allclose(example["boxes"], [[10, 10, 30, 30], [50, 50, 64, 64]])
    assert example["classes"].tolist() == [0, 1]


def test_detector_trains_and_evaluates_on_coco_json_with_corrupt_images(
        folder, tmp_path, digit_scenes_data_dir):
    from helpers import tiny_config  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    config = tiny_config("detection", digit_scenes_data_dir, steps=2)
    config.dataset.name = f"coco_json:{write_coco(folder)}:{folder}"
    config.dataset.train_split = config.dataset.eval_split = "all"
    config.eval.num_images = 0  # every readable image
    metrics = trainer.train(config, str(tmp_path / "run"))
    assert metrics["step"] == 2 and np.isfinite(metrics["AP"])
    # Scored against the JSON on the readable images, every one of them.
    assert metrics["num_images"] == len(GOOD)
