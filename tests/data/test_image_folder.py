"""Tests for `images:<glob>` sources (`rethink_tf.data.image_folder`)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rethink_tf.data import example as ex
from rethink_tf.data import image_folder
from rethink_tf.data import sources


@pytest.fixture
def folder(tmp_path):
    """Images of several modes in nested folders, plus two unreadable files."""
    root = tmp_path / "unlabeled"
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(np.full((12, 9, 3), (10, 20, 30), np.uint8)).save(root / "rgb.png")
    Image.fromarray(np.full((8, 6, 3), 128, np.uint8)).save(root / "nested" / "photo.jpg")
    Image.fromarray(np.full((5, 7), 77, np.uint8)).save(root / "nested" / "gray.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 50
    Image.fromarray(rgba, mode="RGBA").save(root / "nested" / "deeper" / "rgba.png")
    Image.fromarray(np.full((3, 5), 65535, np.uint16)).save(root / "wide16.png")
    good = (root / "rgb.png").read_bytes()
    (root / "nested" / "truncated.png").write_bytes(good[:len(good) // 2])
    (root / "nested" / "deeper" / "empty.jpg").write_bytes(b"")
    return root


def test_nested_glob_skips_and_counts_unreadable_files(folder):
    counter = image_folder.SkipCounter()
    ds = sources.load(f"images:{folder}/**/*.*", "all", skip_counter=counter)
    ex.check_example_spec(ds.element_spec)
    assert set(ds.element_spec) == {"image", "source_id"}
    got = {e["source_id"].decode(): e["image"] for e in tfds.as_numpy(ds)}
    assert sorted(got) == ["nested/deeper/rgba.png", "nested/gray.png", "nested/photo.jpg",
                           "rgb.png", "wide16.png"]
    assert counter.count == 2
    assert sorted(p.split("unlabeled/")[1] for p in counter.paths) == [
        "nested/deeper/empty.jpg", "nested/truncated.png"]
    # A second pass over the data does not count the same files again.
    list(ds)
    assert counter.count == 2
    for image in got.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    np.testing.assert_array_equal(got["rgb.png"][0, 0], [10, 20, 30])
    np.testing.assert_array_equal(got["nested/gray.png"][0, 0], [77, 77, 77])
    np.testing.assert_array_equal(got["nested/deeper/rgba.png"][0, 0], [200, 0, 0])
    np.testing.assert_array_equal(got["wide16.png"][0, 0], [255, 255, 255])
    assert got["nested/gray.png"].shape == (5, 7, 3)


def test_count_unreadable_without_a_dataset(folder):
    assert image_folder.count_unreadable(f"{folder}/**/*") == 2
    assert image_folder.count_unreadable(f"{folder}/*.png") == 0


def test_directory_means_every_file_under_it(folder):
    ids = {e["source_id"].decode() for e in tfds.as_numpy(
        sources.load(f"images:{folder}/nested", "all"))}
    assert ids == {"gray.png", "photo.jpg", "deeper/rgba.png"}


def test_sixteen_bit_values_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((2, 2), 257 * 40, np.uint16)).save(tmp_path / "mid.png")
    np.testing.assert_array_equal(image_folder.decode_image(str(tmp_path / "mid.png")),
                                  np.full((2, 2, 3), 40, np.uint8))


def test_empty_glob_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images:.*\*\.jpg: the glob matches no files"):
        sources.load(f"images:{tmp_path}/*.jpg", "all")


def test_fraction_and_shuffle(folder):
    name = f"images:{folder}/**/*.*"
    all_ids = [e["source_id"] for e in tfds.as_numpy(sources.load(name, "all"))]
    half = [e["source_id"] for e in tfds.as_numpy(sources.load(name, "all", fraction=0.5))]
    assert half == [i for i in all_ids if sources.in_fraction(i, 0.5).numpy()]
    shuffled = [e["source_id"] for e in tfds.as_numpy(
        sources.load(name, "all", shuffle_files=True))]
    assert sorted(shuffled) == sorted(all_ids)


_LOAD_IMAGES = """
import sys
from rethink_tf.data import sources
name = "images:" + sys.argv[1]
for kwargs in ({}, {"fraction": 0.5, "shuffle_files": True}, {"images_only": True}):
    print(len(list(sources.load(name, "all", **kwargs))))
"""


def test_loading_images_logs_no_autograph_warning(folder):
    # A fresh process: AutoGraph warns once per function, and only at the first trace.
    env = {k: v for k, v in os.environ.items() if k != "AUTOGRAPH_VERBOSITY"}
    result = subprocess.run([sys.executable, "-c", _LOAD_IMAGES, f"{folder}/**/*.*"],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = result.stdout.split()
    assert counts[0] == counts[2] == "5", result.stdout
    output = result.stdout + result.stderr
    assert "AutoGraph" not in output, output[-3000:]
    # Unreadable files are still reported: the logging itself works in this process.
    assert "skipping unreadable image" in result.stderr
