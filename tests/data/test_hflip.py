"""Horizontal flips per dataset: policies, pipelines and SimCLR views leave them out on request."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import augment as A
from rethink_tf.data import pipelines
from rethink_tf.data import simclr_augment
from rethink_tf.data import sources

# Two objects side by side in one horizontal band: no op of any policy (rotation <= 30 deg,
# shear <= 0.3, translation, scale, crop; at most two in a row) swaps their left-right order,
# and a mirror always does.
LEFT, RIGHT = 0, 1
SEEDS = 24


def side_by_side(height=64, width=96):
    image = np.full((height, width, 3), 40, np.uint8)
    boxes = [[8, 22, 28, 42], [62, 22, 88, 42]]  # xyxy
    for (x1, y1, x2, y2), colour in zip(boxes, [(250, 20, 20), (20, 250, 20)]):
        image[y1:y2, x1:x2] = colour
    return {"image": tf.constant(image), "boxes": tf.constant(boxes, tf.float32),
            "classes": tf.constant([LEFT, RIGHT], tf.int32), "source_id": tf.constant("pair")}


def mirrored(boxes, classes):
    """True / False when both objects survived and their order is swapped / kept; else None."""
    boxes, classes = np.asarray(boxes), np.asarray(classes)
    centres = {int(c): (b[0] + b[2]) / 2 for b, c in zip(boxes, classes) if c >= 0}
    if set(centres) != {LEFT, RIGHT}:
        return None
    return bool(centres[LEFT] > centres[RIGHT])


def _augmented(policy, hflip):
    """The policy's output for SEEDS stateless seeds, traced once inside tf.data."""
    seeds = tf.stack([tf.constant([11, i], tf.int64) for i in range(SEEDS)])
    fn = A.make_augment_fn(policy, (64, 64), hflip=hflip)
    return list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: fn(side_by_side(), seed=s)))


@pytest.mark.parametrize("policy", A.POLICIES)
def test_no_policy_mirrors_without_hflip_and_only_the_flip_changes(policy):
    flipping, fixed = _augmented(policy, True), _augmented(policy, False)
    flips = 0
    for i, (with_flip, without) in enumerate(zip(flipping, fixed)):
        assert mirrored(without["boxes"], without["classes"]) is not True, (policy, i)
        state = mirrored(with_flip["boxes"], with_flip["classes"])
        if state is False:
            # The coin said "no flip": the seeding is unchanged, so the outputs are the same.
            for key in ("image", "boxes", "classes", "image_info"):
                np.testing.assert_array_equal(with_flip[key].numpy(), without[key].numpy(),
                                              err_msg=f"{policy} seed {i} {key}")
        flips += state is True
    assert flips >= 2, f"{policy}: hflip=True should mirror about half of {SEEDS} examples"


def _pipeline_outputs(task, hflip, count=SEEDS):
    example = side_by_side()
    if task == "classification":
        example = {"image": example["image"], "label": tf.constant(3, tf.int32),
                   "source_id": example["source_id"]}
    examples = tf.data.Dataset.from_tensors(example).repeat(count)
    seed = pipelines.stream_seed(0, "train")
    return list(pipelines.preprocess(examples.enumerate(), task, image_size=64, policy="s1",
                                     seed=seed, hflip=hflip))


def test_preprocess_passes_hflip_to_detection_policies():
    def flips(hflip):
        states = [mirrored(e["bounding_boxes"]["boxes"], e["bounding_boxes"]["classes"])
                  for e in _pipeline_outputs("detection", hflip)]
        assert states.count(None) < SEEDS // 2
        return states.count(True)

    assert flips(False) == 0
    assert flips(True) >= 2


def red_left_of_green(image):
    """Whether the red square lies left of the green one (None if either is cropped away)."""
    image = np.asarray(image)
    red = (image[..., 0] > 150) & (image[..., 1] < 100)
    green = (image[..., 1] > 150) & (image[..., 0] < 100)
    if not red.any() or not green.any():
        return None
    return bool(np.nonzero(red)[1].mean() < np.nonzero(green)[1].mean())


def test_preprocess_passes_hflip_to_classification():
    def orders(hflip):
        return [red_left_of_green(e["images"].numpy())
                for e in _pipeline_outputs("classification", hflip)]

    assert False not in orders(False)
    assert orders(False).count(True) > SEEDS // 2
    assert orders(True).count(False) >= 2


@pytest.mark.parametrize("in_dataset", [False, True], ids=["eager", "tf_data"])
def test_simclr_views_do_not_flip_with_flip_false(in_dataset):
    tf.random.set_seed(0)
    # Full-image crops and no colour ops: the only thing that can move the square is the flip.
    kwargs = dict(crop_min_area=1.0, color_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)

    def views(flip):
        fn = simclr_augment.make_views_fn((32, 48), flip=flip, **kwargs)
        if in_dataset:
            data = tf.data.Dataset.from_tensors(side_by_side()).repeat(12).map(fn)
            return [v for pair in data for v in pair]
        return [v for _ in range(12) for v in fn(side_by_side())]

    assert all(red_left_of_green(v.numpy()) for v in views(False))
    assert not all(red_left_of_green(v.numpy()) for v in views(True))


@pytest.mark.parametrize("name", [
    "digit_scenes/detection", "digit_scenes/classification", "digit_scenes/glyphs",
    "digit_scenes/glyphs_tiny:1.0.0", "digit_scenes", "mnist", "emnist/letters"])
def test_digit_and_character_data_do_not_keep_labels_under_a_mirror(name):
    assert sources.hflip_keeps_labels(name) is False


@pytest.mark.parametrize("name", [
    "coco/2017", "voc/2012", "voc_sbd", "imagenet2012", "coco_json:/a/ann.json:/a/images",
    "images:/data/*.jpg", "pseudo:/tmp/pseudo", "cifar10", "my_digit_scenes_copy"])
def test_natural_images_keep_labels_under_a_mirror(name):
    assert sources.hflip_keeps_labels(name) is True


def test_hflip_keeps_labels_rejects_an_empty_name():
    with pytest.raises(ValueError, match="source name"):
        sources.hflip_keeps_labels("")
