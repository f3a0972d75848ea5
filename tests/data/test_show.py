"""`python -m rethink_tf.data.show`: a grid of augmented examples with boxes and masks."""

import numpy as np
import pytest
from PIL import Image

from rethink_tf.data import show


@pytest.mark.parametrize("policy", ["s1", "s2", "s3", "s4", "none"])
def test_render_writes_a_grid_for_each_policy(policy, tmp_path, digit_scenes_data_dir):
    out = str(tmp_path / f"grid_{policy}.png")
    show.render("digit_scenes/detection_tiny", "train", policy, out, rows=2, cols=3,
                image_size=64, data_dir=digit_scenes_data_dir)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    assert grid.std() > 10, "the grid must show images, not a blank canvas"


def test_draw_example_marks_boxes_and_ignore_pixels():
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.int64)
    mask[:4] = 255
    out = np.asarray(show.draw_example(image, [[8, 8, 20, 20], [-1, -1, -1, -1]], [2, -1], mask))
    assert out[0, 16].tolist() != [0, 0, 0], "ignore pixels are shaded"
    assert out[8, 14].tolist() != [0, 0, 0], "the box outline is drawn"
    assert out[14, 14].tolist() == [0, 0, 0], "inside the box stays untouched"


def test_classification_dataset_renders(tmp_path, digit_scenes_data_dir):
    out = str(tmp_path / "cls.png")
    show.render("digit_scenes/classification_tiny", "train", "s1", out, rows=1, cols=2,
                image_size=32, data_dir=digit_scenes_data_dir)
    assert Image.open(out).size == (2 * 34 + 2, 34 + 2)
