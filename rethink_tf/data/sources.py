"""Every data source as one `tf.data.Dataset` of canonical examples.

`load(name, split)` is the one entry point. `name` is one of:

- a TFDS name (`coco/2017`, `digit_scenes/detection`, `digit_scenes/classification`,
  `digit_scenes/glyphs`, `imagenet2012`, `voc_sbd`, ...): the dataset's features are converted by kind:
  `objects/{bbox,label}` -> detection (`boxes`, `classes`), `segmentation_mask` ->
  `mask`, a scalar `label` -> `label`. A dataset with only `image` serves as unlabeled
  images.
- `coco_json:<annotations.json>:<image_dir>`: a user's own COCO-format data
  (see `rethink_tf.data.coco_json`).
- `images:<glob>`: a folder of unlabeled images (see `rethink_tf.data.image_folder`).
- `pseudo:<directory>`: pseudo labels written by `python -m rethink_tf.pseudo_label` (see
  `rethink_tf.data.pseudo_records`); one split, `all`; task and classes from its manifest.

The canonical example (see `rethink_tf.data.example`): `image` uint8 [H, W, 3],
`boxes` float32 [N, 4] absolute pixels xyxy, `classes` int32 [N] contiguous from 0,
`mask` uint8 [H, W, 1] (255 = ignore), `label` int32 [], `source_id` string [].

COCO in TFDS: `objects/label` is a `ClassLabel(num_classes=80)` whose names are set,
during generation, from the annotation file's `categories` in file order (sorted by
category id), and each object's label is its category's position in that list. So the
labels are already contiguous 0..79 in sorted-category-id order; `COCO_CATEGORY_IDS`
maps them back to the official ids, and `info('coco/2017').category_ids` gives the same
tuple. Crowd annotations (`objects/is_crowd`) are removed from the targets unless
`keep_crowd=True`, as COCO training does; COCO evaluation ignores detections matched
to crowd regions, so official numbers must come from the official annotation JSON
(pycocotools), not from these crowd-free targets.

source_id: `str(image/id)` for COCO (matches the official annotation JSON); otherwise
the first present of `image/filename`, `file_name`, `filename`, `image/id`, `id`; if a
dataset has none of them, TFDS's `tfds_id` (`<name>-<split>.<format>-<shard>__<index>`),
which is stable for a given prepared dataset (TFDS writes shards deterministically) and
unique. A content hash was rejected because identical images would collide.

Horizontal flips: `hflip_keeps_labels(name)` says whether a mirrored image keeps its labels.
It does not for `digit_scenes` (every config: its digits and typeset glyphs) nor for the other
digit and character datasets of TFDS in `MIRROR_CHANGES_LABELS`; it does for COCO, VOC,
ImageNet, `coco_json:` and `images:` data and everything else. Training passes it to
`pipelines.preprocess(..., hflip=...)`, which leaves the flip out of every policy.

`fraction` keeps the examples whose `to_hash_bucket_fast(source_id, 10000)` (FarmHash
Fingerprint64, the same on every machine) is below `round(fraction * 10000)`, so a
20% subset is contained in the 50% one and the subset depends on nothing but ids.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Mapping

import tensorflow as tf

from rethink_tf.data import coco_json
from rethink_tf.data import example as ex
from rethink_tf.data import image_folder
from rethink_tf.data import pseudo_records
from rethink_tf.data import subsets
from rethink_tf.data.subsets import FRACTION_BUCKETS  # noqa: F401 (API)
from rethink_tf.data.subsets import in_fraction

DETECTION = "detection"
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"

COCO_JSON_PREFIX = "coco_json:"
IMAGES_PREFIX = "images:"
PSEUDO_PREFIX = "pseudo:"

# The 80 category ids of COCO 2014/2017 instances annotations, sorted; TFDS label i is
# COCO_CATEGORY_IDS[i].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74,
    75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)


# TFDS builders whose labels a horizontal mirror changes (a mirrored 2, 3, 5, 7, 9, J or b is
# another glyph or none): digits and characters.
MIRROR_CHANGES_LABELS = ("digit_scenes", "mnist", "emnist", "kmnist", "svhn_cropped",
                         "omniglot")

_SOURCE_ID_KEYS = ("image/filename", "file_name", "filename", "image/id", "id")
_COCO_SOURCE_ID_KEYS = ("image/id", "image/filename")
_OBJECT_KEYS = ("objects", "panoptic_objects")
_TFDS_ID = "tfds_id"


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What model builders and evaluation need to know about a source.

    Attributes:
        name: the source name as given to `load`.
        tasks: the task kinds the source has labels for, a subset of
            ('detection', 'segmentation', 'classification'); empty for unlabeled images.
        num_classes: per task, the number of classes (for segmentation, the number of
            mask class ids, background included, 255 = ignore excluded). A `coco_json:`
            source also has a 'segmentation' entry, for the masks `with_masks=True` adds.
        class_names: per task, the class names, index = class id.
        splits: the split names `load` accepts; empty for a TFDS dataset that is not
            prepared yet (TFDS only learns its splits when generating).
        category_ids: for COCO-style detection sources, contiguous class id ->
            original category id (to map detections back for COCO evaluation); else None.
        mask_class_offset: when the source has both boxes and a semantic mask whose id for
            detection class c is c + offset (digit_scenes: 1), that offset; augmentation then
            re-tightens boxes to mask pixels after geometry. None otherwise.
    """

    name: str
    tasks: tuple[str, ...]
    num_classes: Mapping[str, int]
    class_names: Mapping[str, tuple[str, ...]]
    splits: tuple[str, ...]
    category_ids: tuple[int, ...] | None = None
    mask_class_offset: int | None = None

    @property
    def primary_task(self) -> str | None:
        """The first task kind, or None for an unlabeled source."""
        return self.tasks[0] if self.tasks else None


def load(name: str, split: str, *, data_dir: str | None = None,
         fraction: float | None = None, shuffle_files: bool = False,
         read_config=None, keep_crowd: bool = False, with_masks: bool = False,
         skip_counter=None, keep_encoded: bool = False,
         images_only: bool = False) -> tf.data.Dataset:
    """Loads a source as a `tf.data.Dataset` of canonical examples.

    Args:
        name: a TFDS name, `coco_json:<annotations.json>:<image_dir>`, `images:<glob>` or
            `pseudo:<directory>`.
        split: a split name (TFDS slicing such as `train[:10%]` works for TFDS names);
            `coco_json:`, `images:` and `pseudo:` sources have the single split `all`.
        data_dir: the TFDS data dir (TFDS names only).
        fraction: in (0, 1]; keep the deterministic, nested subset of this size chosen
            by a hash of `source_id`. None keeps everything.
        shuffle_files: shuffle file (TFDS) or image (other sources) order.
        read_config: a `tfds.ReadConfig`; for other sources only its `shuffle_seed` is
            used.
        keep_crowd: keep COCO crowd annotations as ordinary boxes (default: dropped).
        with_masks: `coco_json:` only: also emit a semantic `mask` from the
            polygon/RLE segmentations.
        skip_counter: `images:` and `coco_json:`: an `image_folder.SkipCounter` that records the
            unreadable files skipped.
        keep_encoded: TFDS names only: also emit `image/encoded`, the stored bytes the
            image was decoded from (read once: the image is decoded from these bytes), so a
            writer can copy them instead of re-encoding. Other sources ignore it.
        images_only: only `image` and `source_id` (and `image/encoded`): labels, e.g. an
            unlabeled split's hidden ground truth, are not read (TFDS: not even parsed or
            decoded).

    Returns:
        A dataset of dicts with the canonical keys the source has.

    Raises:
        ValueError: unknown name or split, bad `fraction`, or bad source contents.
        FileNotFoundError: a file the source names does not exist.
    """
    fraction = subsets.check_fraction(fraction)
    if name.startswith(COCO_JSON_PREFIX):
        annotations, image_dir = parse_coco_json_name(name)
        _check_single_split(name, split)
        ds = coco_json.load(annotations, image_dir, keep_crowd=keep_crowd,
                            with_masks=with_masks, fraction=fraction,
                            shuffle=shuffle_files, seed=_shuffle_seed(read_config),
                            skip_counter=skip_counter)
    elif name.startswith(IMAGES_PREFIX):
        _check_single_split(name, split)
        ds = image_folder.load(name[len(IMAGES_PREFIX):], skip_counter=skip_counter,
                               fraction=fraction, shuffle=shuffle_files,
                               seed=_shuffle_seed(read_config))
    elif name.startswith(PSEUDO_PREFIX):
        _check_single_split(name, split)
        ds = pseudo_records.load_pseudo_labels(name[len(PSEUDO_PREFIX):], shuffle_files=shuffle_files,
                                        seed=_shuffle_seed(read_config))
        if fraction is not None and fraction < 1.0:
            ds = ds.filter(lambda e: in_fraction(e[ex.SOURCE_ID], fraction))
    else:
        ds = _load_tfds(name, split, data_dir=data_dir, shuffle_files=shuffle_files,
                        read_config=read_config, keep_crowd=keep_crowd, fraction=fraction,
                        keep_encoded=keep_encoded, images_only=images_only)
    if images_only:
        ds = keep_images_only(ds)
    ex.check_example_spec(ds.element_spec, name)
    return ds


def hflip_keeps_labels(name: str) -> bool:
    """Whether a horizontally mirrored image of source `name` keeps its labels.

    Args:
        name: a source name as for `load` (TFDS name with or without config and version,
            `coco_json:...`, `images:...`, `pseudo:...`).

    Returns:
        False for the TFDS builders in `MIRROR_CHANGES_LABELS` (`digit_scenes/detection`,
        `digit_scenes/classification`, `digit_scenes/glyphs`, `mnist`, ...); True for
        everything else (COCO, VOC, ImageNet, a user's `coco_json:` or `images:` data, pseudo
        labels). Pseudo labels take the flip setting of the human data they train beside.

    Raises:
        ValueError: if `name` is empty.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"hflip_keeps_labels: source name must be a non-empty string, got "
                         f"{name!r}")
    if name.startswith((COCO_JSON_PREFIX, IMAGES_PREFIX, PSEUDO_PREFIX)):
        return True
    builder = name.strip().split("/")[0].split(":")[0].lower()
    return builder not in MIRROR_CHANGES_LABELS


def keep_images_only(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Canonical examples reduced to `image`, `source_id` and `image/encoded` (if present)."""
    keys = [k for k in (ex.IMAGE, ex.SOURCE_ID, ex.ENCODED) if k in ds.element_spec]
    if len(keys) == len(ds.element_spec):
        return ds
    return ds.map(lambda e: {k: e[k] for k in keys})


def info(name: str, data_dir: str | None = None) -> SourceInfo:
    """Describes a source without reading its examples.

    Args:
        name: as for `load`.
        data_dir: the TFDS data dir (TFDS names only).

    Returns:
        A `SourceInfo`.
    """
    if name.startswith(COCO_JSON_PREFIX):
        annotations, _ = parse_coco_json_name(name)
        ids, names = coco_json.categories(annotations)
        # 'segmentation' describes the masks `with_masks=True` adds: 0 bg, k+1 = class k.
        mask_names = ("background",) + names
        return SourceInfo(name=name, tasks=(DETECTION,),
                          num_classes={DETECTION: len(ids), SEGMENTATION: len(mask_names)},
                          class_names={DETECTION: names, SEGMENTATION: mask_names},
                          splits=("all",), category_ids=ids)
    if name.startswith(IMAGES_PREFIX):
        return SourceInfo(name=name, tasks=(), num_classes={}, class_names={},
                          splits=("all",))
    if name.startswith(PSEUDO_PREFIX):
        manifest = pseudo_records.read_manifest(name[len(PSEUDO_PREFIX):])
        task, count = manifest["task"], int(manifest["num_classes"])
        names = tuple(manifest.get("class_names") or (str(c) for c in range(count)))
        return SourceInfo(name=name, tasks=(task,), num_classes={task: count},
                          class_names={task: names}, splits=("all",))
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    tasks, num_classes, class_names = [], {}, {}
    objects_key = _objects_key(features)
    if objects_key:
        names = _label_names(features[objects_key]["label"])
        tasks.append(DETECTION)
        num_classes[DETECTION], class_names[DETECTION] = len(names), names
    if "segmentation_mask" in features:
        names = tuple(getattr(builder, "MASK_CLASS_NAMES", ()) or ())
        if not names and objects_key:
            # Mask ids follow the digit_scenes convention: 0 background, k + 1 = class k.
            names = ("background",) + class_names[DETECTION]
        tasks.append(SEGMENTATION)
        num_classes[SEGMENTATION], class_names[SEGMENTATION] = len(names), names
    if _has_scalar_label(features):
        names = _label_names(features["label"])
        tasks.append(CLASSIFICATION)
        num_classes[CLASSIFICATION], class_names[CLASSIFICATION] = len(names), names
    mask_class_offset = None
    if objects_key and "segmentation_mask" in features and not getattr(
            builder, "MASK_CLASS_NAMES", None):
        mask_class_offset = 1
    category_ids = None
    if objects_key == "objects" and builder.name == "coco" and len(
            class_names[DETECTION]) == len(COCO_CATEGORY_IDS):
        category_ids = COCO_CATEGORY_IDS
    return SourceInfo(name=name, tasks=tuple(tasks), num_classes=num_classes,
                      class_names=class_names, splits=_tfds_splits(builder),
                      category_ids=category_ids, mask_class_offset=mask_class_offset)


def _tfds_splits(builder):
    """The split names of a TFDS builder: its info's once prepared; before that, those its
    config declares (`digit_scenes` configs' `split_sizes`), else none known (unchecked)."""
    splits = tuple(builder.info.splits.keys())
    declared = getattr(builder.builder_config, "split_sizes", None)
    return splits or tuple(declared or ())


def parse_coco_json_name(name: str) -> tuple[str, str]:
    """Splits `coco_json:<annotations.json>:<image_dir>` into its two paths.

    The annotation path ends at the first `.json:`, so either path may hold colons
    (Windows drives, `C:\\data\\ann.json:D:\\images`).

    Args:
        name: the source name.

    Returns:
        (annotation file path, image directory).
    """
    rest = name[len(COCO_JSON_PREFIX):]
    match = re.search(r"\.json:", rest, flags=re.IGNORECASE)
    if not match or not rest[match.end():]:
        raise ValueError(f"source {name!r}: expected 'coco_json:<annotations.json>:<image_dir>' "
                         "(the annotation file must end in .json)")
    return rest[:match.end() - 1], rest[match.end():]


def _check_single_split(name: str, split: str) -> None:
    if split != "all":
        raise ValueError(f"source {name!r} has one split, 'all'; got split {split!r}. "
                         "Available splits: ['all']")


def _shuffle_seed(read_config):
    return getattr(read_config, "shuffle_seed", None) if read_config is not None else None


def _tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        base = name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False),
                                          n=5)
        raise ValueError(
            f"unknown source {name!r}: not a TFDS dataset"
            + (f" (did you mean {close}?)" if close else "")
            + ". Available: any TFDS name (e.g. 'coco/2017', 'imagenet2012', "
            "'digit_scenes/detection', 'digit_scenes/classification', 'voc_sbd'), "
            "'coco_json:<annotations.json>:<image_dir>' or 'images:<glob>'.") from err
    except ValueError as err:
        # TFDS raises ValueError for a bad config name; say what the configs are.
        base = name.split("/")[0].split(":")[0]
        try:
            configs = [c.name for c in tfds.builder_cls(base).BUILDER_CONFIGS]
        except Exception:  # pylint: disable=broad-except
            configs = []
        raise ValueError(f"unknown source {name!r}: {err}"
                         + (f"; configs of {base!r}: {configs}" if configs else "")) from err


def _split_names(split: str) -> list[str]:
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in str(split).split("+")]


def _load_tfds(name, split, *, data_dir, shuffle_files, read_config, keep_crowd, fraction,
               keep_encoded=False, images_only=False):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = _tfds_builder(name, data_dir)
    builder.download_and_prepare()
    available = list(builder.info.splits.keys())
    # An unprepared (mocked) builder knows no splits; TFDS then checks the split itself.
    if available:
        unknown = [s for s in _split_names(split) if s not in available]
        if unknown:
            raise ValueError(f"source {name!r} has no split {unknown[0]!r}; "
                             f"available splits: {sorted(available)}")
    features = builder.info.features
    if "image" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature "
                         f"(features: {sorted(features.keys())}); sources need images")
    id_keys = _COCO_SOURCE_ID_KEYS if builder.name == "coco" else _SOURCE_ID_KEYS
    id_key = next((k for k in id_keys if k in features), None)
    if id_key is None:
        read_config = dataclasses.replace(read_config or tfds.ReadConfig(), add_tfds_id=True)
        id_key = _TFDS_ID
    keep_encoded = keep_encoded and isinstance(features["image"], tfds.features.Image)
    decoders = {"image": tfds.decode.SkipDecoding()} if keep_encoded else None
    if images_only:
        # Parse and decode nothing but the image and its id (masks are PNGs to decode).
        wanted = {"image": True, **({id_key: True} if id_key in features else {})}
        decoders = tfds.decode.PartialDecoding(wanted, decoders=decoders)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                            decoders=decoders)
    convert = _tfds_converter(features, id_key, keep_crowd, keep_encoded, images_only,
                              where=f"source {name} split {split}")
    if fraction is not None and fraction < 1.0:
        # Filter on the raw id before converting so dropped examples cost no work.
        ds = ds.filter(lambda raw: in_fraction(_to_string(raw[id_key]), fraction))
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def _objects_key(features):
    for key in _OBJECT_KEYS:
        if key in features and "bbox" in features[key] and "label" in features[key]:
            return key
    return None


def _has_scalar_label(features) -> bool:
    return "label" in features and features["label"].shape == ()


def _label_names(feature) -> tuple[str, ...]:
    names = getattr(feature, "names", None)
    if names:
        return tuple(names)
    return tuple(str(i) for i in range(int(getattr(feature, "num_classes", 0) or 0)))


def _tfds_converter(features, id_key: str, keep_crowd: bool, keep_encoded: bool,
                    images_only: bool, where: str):
    """Builds the map fn from a TFDS example to a canonical example.

    With `keep_encoded`, `raw["image"]` holds the stored bytes (TFDS `SkipDecoding`); they
    are decoded here by the feature itself, exactly as TFDS would, and kept as `image/encoded`.
    """
    objects_key = None if images_only else _objects_key(features)
    has_crowd = bool(objects_key) and "is_crowd" in features[objects_key]
    has_mask = "segmentation_mask" in features and not images_only
    has_label = _has_scalar_label(features) and not images_only

    def convert(raw):
        encoded = None
        if keep_encoded:
            encoded = raw["image"]
            raw = dict(raw, image=features["image"].decode_example(encoded))
        image = _to_rgb_uint8(raw["image"])
        out = {ex.IMAGE: image, ex.SOURCE_ID: _to_string(raw[id_key])}
        if encoded is not None:
            out[ex.ENCODED] = encoded
        if objects_key:
            boxes, out[ex.CLASSES] = _objects_to_boxes(
                raw[objects_key], tf.shape(image), has_crowd and not keep_crowd)
            out[ex.BOXES] = ex.check_finite_boxes(boxes, out[ex.SOURCE_ID], where)
        if has_mask:
            mask = tf.cast(raw["segmentation_mask"], tf.uint8)
            out[ex.MASK] = tf.reshape(mask, tf.concat([tf.shape(mask)[:2], [1]], 0))
        if has_label:
            out[ex.LABEL] = tf.cast(raw["label"], tf.int32)
        return out

    return convert


def _objects_to_boxes(objects, image_shape, drop_crowd: bool):
    """Normalized yxyx `objects/bbox` -> absolute xyxy boxes and int32 classes."""
    bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
    label = tf.cast(objects["label"], tf.int32)
    # Mocked TFDS data gives each sequence field its own length; real data never does.
    n = tf.minimum(tf.shape(bbox)[0], tf.shape(label)[0])
    crowd = None
    if drop_crowd:
        crowd = tf.cast(objects["is_crowd"], tf.bool)
        n = tf.minimum(n, tf.shape(crowd)[0])
        crowd = crowd[:n]
    bbox, label = bbox[:n], label[:n]
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    # Ordering corners is a no-op on real data and keeps random (mocked) boxes valid.
    ymin = tf.minimum(bbox[:, 0], bbox[:, 2]) * height
    ymax = tf.maximum(bbox[:, 0], bbox[:, 2]) * height
    xmin = tf.minimum(bbox[:, 1], bbox[:, 3]) * width
    xmax = tf.maximum(bbox[:, 1], bbox[:, 3]) * width
    boxes = tf.stack([xmin, ymin, xmax, ymax], axis=-1)
    if crowd is not None:
        keep = tf.logical_not(crowd)
        boxes, label = tf.boolean_mask(boxes, keep), tf.boolean_mask(label, keep)
    return tf.reshape(boxes, [-1, 4]), tf.reshape(label, [-1])


def _to_rgb_uint8(image):
    if image.dtype != tf.uint8:
        raise ValueError(f"'image' must be uint8, got {image.dtype.name}")
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"'image' must have 1, 3 or 4 channels, got shape {image.shape}")
    return image


def _to_string(value):
    if value.dtype == tf.string:
        return value
    return tf.strings.as_string(value)
