"""Tests of the `digit_scenes` benchmark: scene composition and the TFDS builder."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rethink_tf.data import digit_scenes
from rethink_tf.data import scene_render

MIN_SIZE, MAX_SIZE = scene_render.DEFAULT_DIGIT_SIZE_RANGE


def _records(load, task, split):
    """All records of a tiny split as numpy dicts, keyed by filename."""
    return {r["image/filename"].decode(): r for r in tfds.as_numpy(load(task, split))}


def _render(seed, count=6):
    """Renders one scene of `count` labeled-pool digits with generator seed `seed`."""
    digits, labels = scene_render.load_mnist()
    pool = scene_render.split_digit_pools(labels)["labeled"]
    plan = scene_render.plan_scenes(np.random.default_rng(seed), pool, labels, 1, count,
                                    count)[0]
    return scene_render.render_scene(np.random.default_rng(seed), digits, plan, labels[plan],
                                     scene_render.load_textures())


# ---- scene_render -------------------------------------------------------------------------

def test_pools_are_disjoint_stratified_and_cover_all_digits():
    _, labels = scene_render.load_mnist()
    pools = scene_render.split_digit_pools(labels, pool_seed=0)
    combined = np.concatenate(list(pools.values()))
    assert len(combined) == len(np.unique(combined)) == len(labels)
    for name, pool in pools.items():
        counts = np.bincount(labels[pool], minlength=10)
        np.testing.assert_array_equal(counts, scene_render.POOL_SIZES[name], err_msg=name)


def test_pools_depend_only_on_pool_seed():
    _, labels = scene_render.load_mnist()
    first = scene_render.split_digit_pools(labels, 0)
    again = scene_render.split_digit_pools(labels, 0)
    other = scene_render.split_digit_pools(labels, 1)
    for name in scene_render.POOL_NAMES:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["labeled"], other["labeled"])


@pytest.mark.parametrize("size", [24, 31, 47, 64])
def test_prepare_digit_has_exact_longer_side(size):
    digits, _ = scene_render.load_mnist()
    for index in range(0, 5000, 97):
        alpha, mask = scene_render.prepare_digit(digits[index], size, aspect=1.15)
        assert max(mask.shape) == size
        # The mask's tight box spans the whole crop.
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        np.testing.assert_array_equal(mask, alpha >= scene_render.MASK_THRESHOLD)


def test_scene_boxes_equal_visible_instance_pixels():
    for seed in range(25):
        scene = _render(seed)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.labels) <= 6
        assert np.all(np.isin(scene.digit_ids, scene_render.split_digit_pools(
            scene_render.load_mnist()[1])["labeled"]))
        mask = scene.segmentation_mask()[..., 0]
        for k, box in enumerate(scene.boxes):
            visible = scene.instances == k + 1
            rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
            assert tuple(box) == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1), (seed, k)
            assert scene.areas[k] == visible.sum()
            assert np.all(mask[visible] == scene.labels[k] + 1)
            full = scene.full_boxes[k]
            assert max(full[2] - full[0], full[3] - full[1]) in range(MIN_SIZE, MAX_SIZE + 1)
            assert max(box[2] - box[0], box[3] - box[1]) in range(MIN_SIZE, MAX_SIZE + 1)
        assert np.all((mask == 0) == (scene.instances == 0))


def test_occlusion_happens_but_keeps_most_of_each_digit():
    occluded = 0
    for seed in range(40):
        scene = _render(seed)
        assert np.all(scene.areas >= 0.7 * scene.full_areas)
        assert np.all(scene.areas <= scene.full_areas)
        occluded += int(np.sum(scene.areas < scene.full_areas))
    assert occluded > 0


def test_render_is_deterministic_given_the_generator():
    first, again, other = _render(7), _render(7), _render(8)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    assert not np.array_equal(first.image, other.image)


def test_contrasting_colour_differs_in_luma():
    rng = np.random.default_rng(0)
    luma_weights = np.array([0.299, 0.587, 0.114])
    for background in np.linspace(0.0, 1.0, 21):
        colour = scene_render.contrasting_colour(rng, background)
        assert abs(colour @ luma_weights - background) >= 0.45 - 1e-4


def test_plan_scenes_puts_every_class_first_in_ten_scenes():
    _, labels = scene_render.load_mnist()
    pool = scene_render.split_digit_pools(labels)["test"]
    plans = scene_render.plan_scenes(np.random.default_rng(3), pool, labels, 10, 1, 6)
    assert sorted(labels[p[0]] for p in plans) == list(range(10))
    assert all(1 <= len(p) <= 6 and np.isin(p, pool).all() for p in plans)


# ---- config --------------------------------------------------------------------------------

def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="task"):
        digit_scenes.DigitScenesConfig(name="x", task="segmentation")
    with pytest.raises(ValueError, match="digit_size_range"):
        digit_scenes.DigitScenesConfig(name="x", image_size=64, digit_size_range=(24, 96))
    with pytest.raises(ValueError, match="num_unlabeled"):
        digit_scenes.DigitScenesConfig(name="x", task="classification")


def test_split_plans_use_disjoint_pools_and_classification_uses_unlabeled_pool():
    _, labels = scene_render.load_mnist()
    pools = scene_render.split_digit_pools(labels)
    used = {}
    for task in digit_scenes.TASKS:
        config = digit_scenes.tiny_config(task)
        for split in config.split_sizes:
            ids = np.concatenate([np.atleast_1d(p) for p in digit_scenes.split_plan(config, split)])
            pool = digit_scenes.SPLIT_POOLS[task][split]
            assert np.isin(ids, pools[pool]).all(), (task, split)
            used.setdefault(pool, set()).update(ids.tolist())
    assert digit_scenes.SPLIT_POOLS["classification"]["train"] == "unlabeled"
    names = list(used)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not used[a] & used[b], (a, b)


# ---- the TFDS builder ----------------------------------------------------------------------

def test_tiny_builds_have_configured_splits_and_features(digit_scenes_data_dir):
    for task in digit_scenes.TASKS:
        builder = tfds.builder("digit_scenes", config=digit_scenes.tiny_config(task),
                               data_dir=digit_scenes_data_dir)
        sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
        assert sizes == digit_scenes.tiny_config(task).split_sizes
    det = tfds.builder("digit_scenes/detection_tiny", data_dir=digit_scenes_data_dir).info
    assert det.features["image"].shape == (128, 128, 3)
    assert det.features["segmentation_mask"].shape == (128, 128, 1)
    assert det.features["objects"]["label"].names == [str(c) for c in range(10)]
    cls = tfds.builder("digit_scenes/classification_tiny", data_dir=digit_scenes_data_dir).info
    assert cls.features["image"].shape == (64, 64, 3)
    assert cls.supervised_keys == ("image", "label")


def test_every_class_in_every_split(load_digit_scenes):
    for split in digit_scenes.tiny_config("detection").split_sizes:
        records = _records(load_digit_scenes, "detection", split).values()
        assert set(np.concatenate([r["objects"]["label"] for r in records])) == set(range(10))
    for split in digit_scenes.tiny_config("classification").split_sizes:
        records = _records(load_digit_scenes, "classification", split).values()
        assert {int(r["label"]) for r in records} == set(range(10)), split


def test_detection_boxes_match_segmentation_masks(load_digit_scenes):
    ids, names = set(), set()
    for split in digit_scenes.tiny_config("detection").split_sizes:
        for name, record in _records(load_digit_scenes, "detection", split).items():
            ids.add(int(record["image/id"]))
            names.add(name)
            mask = record["segmentation_mask"][..., 0]
            objects = record["objects"]
            boxes = np.round(objects["bbox"] * 128).astype(int)
            assert len(boxes) >= 1
            for box, label, area in zip(boxes, objects["label"], objects["area"]):
                # Each box's edges touch visible pixels of its class.
                inside = mask[box[0]:box[2], box[1]:box[3]] == label + 1
                rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
                assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (
                    0, 0, box[2] - box[0], box[3] - box[1]), name
                assert 0 < area <= inside.sum()
                assert MIN_SIZE <= max(box[2] - box[0], box[3] - box[1]) <= MAX_SIZE
            for c in range(10):
                pixels = mask == c + 1
                chosen = boxes[objects["label"] == c]
                if not pixels.any():
                    assert len(chosen) == 0
                    continue
                rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
                union = (chosen[:, 0].min(), chosen[:, 1].min(), chosen[:, 2].max(),
                         chosen[:, 3].max())
                assert union == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1), (name, c)
                assert objects["area"][objects["label"] == c].sum() == pixels.sum()
            assert set(np.unique(mask)) <= set(range(11))
    assert len(ids) == len(names) == 24 + 48 + 16 + 16


def test_classification_records_have_one_label_from_the_plan(load_digit_scenes):
    _, labels = scene_render.load_mnist()
    config = digit_scenes.tiny_config("classification")
    for split in config.split_sizes:
        plan = digit_scenes.split_plan(config, split)
        for name, record in _records(load_digit_scenes, "classification", split).items():
            assert np.shape(record["label"]) == ()
            assert record["image"].shape == (64, 64, 3)
            assert record["label"] == labels[plan[int(name.split("/")[1])]]


def test_unlabeled_scenes_keep_ground_truth_from_the_plan(load_digit_scenes):
    _, labels = scene_render.load_mnist()
    plans = digit_scenes.split_plan(digit_scenes.tiny_config("detection"), "unlabeled")
    for name, record in _records(load_digit_scenes, "detection", "unlabeled").items():
        planned = iter(labels[plans[int(name.split("/")[1])]])
        kept = record["objects"]["label"]
        # Digits that could not be placed are dropped; the rest keep their paste order.
        assert all(any(c == p for p in planned) for c in kept), name
        assert kept[0] == labels[plans[int(name.split("/")[1])][0]]


def test_build_is_deterministic_and_seed_dependent(digit_scenes_data_dir, tmp_path):
    reference = tfds.builder("digit_scenes", config=digit_scenes.tiny_config("detection"),
                             data_dir=digit_scenes_data_dir)
    again = tfds.builder("digit_scenes", config=digit_scenes.tiny_config("detection"),
                         data_dir=str(tmp_path / "same"))
    reseeded = tfds.builder("digit_scenes", config=digit_scenes.tiny_config("detection", seed=1),
                            data_dir=str(tmp_path / "other"))
    again.download_and_prepare()
    reseeded.download_and_prepare()

    def read(builder):
        return {r["image/filename"]: r for r in tfds.as_numpy(builder.as_dataset(split="test"))}

    first, second, third = read(reference), read(again), read(reseeded)
    assert first.keys() == second.keys() == third.keys()
    for name in first:
        np.testing.assert_array_equal(first[name]["image"], second[name]["image"])
        np.testing.assert_array_equal(first[name]["objects"]["bbox"],
                                      second[name]["objects"]["bbox"])
        np.testing.assert_array_equal(first[name]["segmentation_mask"],
                                      second[name]["segmentation_mask"])
    assert any(not np.array_equal(first[n]["image"], third[n]["image"]) for n in first)
