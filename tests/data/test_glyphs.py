"""The glyph corpus (`digit_scenes/glyphs`): rendering, the TFDS config, its canonical examples."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rethink_tf.data import digit_scenes
from rethink_tf.data import glyphs
from rethink_tf.data import scene_render
from rethink_tf.data import show
from rethink_tf.data import sources


def _render(seed, label=12, size=64):
    return glyphs.render_glyph(np.random.default_rng(seed), label, glyphs.load_fonts(),
                               scene_render.load_textures(), size)


# ---- rendering -----------------------------------------------------------------------------

def test_class_names_are_digits_then_capitals_then_lowercase():
    assert glyphs.NUM_CLASSES == 62
    assert glyphs.CLASS_NAMES[:10] == tuple("0123456789")
    assert glyphs.CLASS_NAMES[10] == "A" and glyphs.CLASS_NAMES[35] == "Z"
    assert glyphs.CLASS_NAMES[36] == "a" and glyphs.CLASS_NAMES[61] == "z"


def test_fonts_span_families_and_styles_and_draw_every_character():
    names = [glyphs.font_name(p) for p in glyphs.load_fonts()]
    assert len(names) >= 16
    for family in ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral", "cmr10"):
        assert family in names
    assert any("Bold" in n for n in names) and any("Italic" in n or "Oblique" in n
                                                  for n in names)
    for path in glyphs.load_fonts():
        shapes = set()
        for char in glyphs.CLASS_NAMES:
            alpha = glyphs.glyph_alpha(char, path, 24)
            assert alpha.max() > 0.5, (glyphs.font_name(path), char)
            shapes.add(alpha.tobytes())
        # A symbol font that maps letters to one box would give far fewer distinct shapes.
        assert len(shapes) >= 55, glyphs.font_name(path)


def test_stroke_width_thickens_the_glyph():
    path = glyphs.load_fonts()[0]
    thin = glyphs.glyph_alpha("H", path, 40)
    thick = glyphs.glyph_alpha("H", path, 40, stroke_width=2)
    assert thick.sum() > 1.3 * thin.sum()


def test_affine_never_mirrors():
    # 'L' has its foot on the right: its ink's centre of mass stays left of the box's centre.
    alpha = glyphs.glyph_alpha("L", glyphs.load_fonts()[0], 48)
    for rotation, shear, aspect in [(0, 0, 1), (15, 0.25, 1.15), (-15, -0.25, 0.85)]:
        out = glyphs.affine_alpha(alpha, rotation, shear, aspect)
        centre_x = (out.sum(0) * np.arange(out.shape[1])).sum() / out.sum()
        assert centre_x < out.shape[1] / 2, (rotation, shear, aspect)
    stretched = glyphs.affine_alpha(alpha, aspect=2.0)
    assert stretched.shape[1] >= 1.8 * alpha.shape[1]
    with pytest.raises(ValueError, match="aspect"):
        glyphs.affine_alpha(alpha, aspect=0.0)


def test_render_is_deterministic_given_the_generator():
    (first, font_a), (again, font_b), (other, _) = _render(5), _render(5), _render(6)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert font_a == font_b
    assert not np.array_equal(first, other)


def test_glyphs_fit_small_images_and_bad_inputs_are_clear_errors():
    image, _ = glyphs.render_glyph(np.random.default_rng(0), 36, glyphs.load_fonts(),
                                   scene_render.load_textures(), 32, (40, 60))
    assert image.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="label"):
        _render(0, label=62)
    with pytest.raises(ValueError, match="font_size_range"):
        glyphs.render_glyph(np.random.default_rng(0), 0, glyphs.load_fonts(),
                            scene_render.load_textures(), 64, (30, 20))


def test_plan_labels_holds_every_class_in_62_images():
    labels = glyphs.plan_labels(np.random.default_rng(0), 124)
    np.testing.assert_array_equal(np.bincount(labels, minlength=62), 2)


# ---- the TFDS config -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def glyph_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("glyphs_tfds"))
    tfds.builder("digit_scenes", config=digit_scenes.tiny_config("glyphs"),
                 data_dir=data_dir).download_and_prepare()
    return data_dir


def _records(data_dir, split, config=None):
    builder = tfds.builder("digit_scenes", config=config or digit_scenes.tiny_config("glyphs"),
                           data_dir=data_dir)
    data = builder.as_dataset(split=split, shuffle_files=False,
                              decoders={"image": tfds.decode.SkipDecoding()})
    return {r["image/filename"].decode(): r for r in tfds.as_numpy(data)}


def test_full_config_sizes_and_the_aligned_corpus_is_unchanged():
    config = digit_scenes.DigitScenes.builder_configs["glyphs"]
    assert config.split_sizes == {"train": 50000, "unlabeled": 20000, "validation": 5000,
                                  "test": 5000}
    assert config.image_size == 64
    aligned = digit_scenes.DigitScenes.builder_configs["classification"]
    assert aligned.task == "classification" and aligned.split_sizes == {
        "train": 20000, "validation": 1000, "test": 1000}


def test_config_rejects_a_bad_font_size_range():
    with pytest.raises(ValueError, match="font_size_range"):
        digit_scenes.DigitScenesConfig(name="x", task="glyphs", image_size=64,
                                       font_size_range=(0, 10))


def test_tiny_build_has_splits_features_and_every_class(glyph_dir):
    config = digit_scenes.tiny_config("glyphs")
    builder = tfds.builder("digit_scenes", config=config, data_dir=glyph_dir)
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == config.split_sizes == {"train": 124, "unlabeled": 31, "validation": 31,
                                           "test": 31}
    assert builder.info.features["image"].shape == (64, 64, 3)
    assert tuple(builder.info.features["label"].names) == glyphs.CLASS_NAMES
    assert builder.info.supervised_keys == ("image", "label")
    train = _records(glyph_dir, "train")
    plan = digit_scenes.split_plan(config, "train")
    for name, record in train.items():
        assert record["label"] == plan[int(name.split("/")[1])]
    np.testing.assert_array_equal(np.bincount([r["label"] for r in train.values()],
                                              minlength=62), 2)


def test_tiny_build_uses_many_fonts_and_styles(glyph_dir):
    fonts = {r["font"].decode() for r in _records(glyph_dir, "train").values()}
    assert len(fonts) >= 12, fonts
    assert {f.split("-")[0] for f in fonts} >= {"DejaVuSans", "DejaVuSerif", "STIXGeneral"}
    assert any("Bold" in f for f in fonts) and any("Italic" in f or "Oblique" in f
                                                  for f in fonts)


def test_build_is_deterministic_and_seed_dependent(glyph_dir, tmp_path):
    again_dir, other_dir = str(tmp_path / "same"), str(tmp_path / "other")
    tfds.builder("digit_scenes", config=digit_scenes.tiny_config("glyphs"),
                 data_dir=again_dir).download_and_prepare()
    reseeded = digit_scenes.tiny_config("glyphs", seed=1)
    tfds.builder("digit_scenes", config=reseeded, data_dir=other_dir).download_and_prepare()
    first, again = _records(glyph_dir, "test"), _records(again_dir, "test")
    other = _records(other_dir, "test", reseeded)
    assert first.keys() == again.keys() == other.keys()
    for name in first:
        assert first[name]["image"] == again[name]["image"], name  # the same JPEG bytes
        assert first[name]["font"] == again[name]["font"]
    assert any(first[n]["image"] != other[n]["image"] for n in first)


def test_splits_differ(glyph_dir):
    validation = {r["image"] for r in _records(glyph_dir, "validation").values()}
    test = {r["image"] for r in _records(glyph_dir, "test").values()}
    assert not validation & test


# ---- canonical examples, the grid ----------------------------------------------------------

def test_sources_load_yields_canonical_classification_examples(glyph_dir):
    name = "digit_scenes/glyphs_tiny"
    examples = list(sources.load(name, "train", data_dir=glyph_dir).take(4))
    assert set(examples[0]) == {"image", "label", "source_id"}
    assert examples[0]["image"].shape == (64, 64, 3)
    assert examples[0]["source_id"].numpy().decode().startswith("train/")
    info = sources.info(name, data_dir=glyph_dir)
    assert info.tasks == ("classification",) and info.num_classes["classification"] == 62
    assert info.class_names["classification"] == glyphs.CLASS_NAMES
    unlabeled = list(sources.load(name, "unlabeled", data_dir=glyph_dir, images_only=True))
    assert len(unlabeled) == 31 and set(unlabeled[0]) == {"image", "source_id"}
    assert sources.hflip_keeps_labels(name) is False


def test_show_draws_a_labelled_grid(glyph_dir, tmp_path):
    out = str(tmp_path / "glyphs.png")
    show.render("digit_scenes/glyphs_tiny", "train", "none", out, rows=2, cols=4,
                image_size=64, data_dir=glyph_dir)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 66 + 2, 4 * 66 + 2, 3)
    # Each cell's class name sits on a black tag in its top-left corner.
    tag = grid[2:13, 2:11]
    assert (tag == 0).all(-1).mean() > 0.4 and tag.min(-1).max() > 200
    assert grid.std() > 10
