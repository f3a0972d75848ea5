"""`voc_sbd`: PASCAL VOC 2012 segmentation with the SBD augmented training set (TFDS).

The user downloads two archives into TFDS's manual dir
(`<data_dir>/downloads/manual/` unless `DownloadConfig(manual_dir=...)` says otherwise):

- `VOCtrainval_11-May-2012.tar` (JPEGImages, SegmentationClass palette PNGs,
  ImageSets/Segmentation/{train,val}.txt),
- `benchmark.tgz` (SBD: benchmark_RELEASE/dataset/{img,cls}, train.txt, val.txt; each
  `cls/<id>.mat` holds a struct `GTcls` whose field `Segmentation` is the class map).

Splits:
- `train_aug`: (SBD train + SBD val + VOC train) - VOC val, the standard 10,582 images.
  An image with a VOC mask uses it (finer, with 255 borders), else its SBD mask.
- `train`: VOC train (1,464); `validation`: VOC val (1,449).

Features: `image`, `image/filename` (the VOC id, e.g. `2007_000032`), and
`segmentation_mask` uint8 [H, W, 1] with ids 0..20 (0 = background) and 255 = ignore.
VOC PNGs are palette images: their palette INDICES are the class ids, so they are read
in mode 'P', never converted to RGB.
"""
from __future__ import annotations

import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "benchmark.tgz"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
           "semantic_contours/benchmark.tgz")

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor")

_VOC_ROOT = ("VOCdevkit", "VOC2012")
_SBD_ROOT = ("benchmark_RELEASE", "dataset")

_INSTRUCTIONS = f"""\
Download into the manual dir (default `<data_dir>/downloads/manual/`):
  {VOC_ARCHIVE}  from {VOC_URL}
  {SBD_ARCHIVE}  from {SBD_URL}
Keep them as archives; they are extracted during preparation.
"""


class VocSbd(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 semantic segmentation with the SBD augmented train set."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VOC 2012 train/val and SBD train_aug (10,582)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    # Read by `rethink_tf.data.sources.info`: mask class id -> name.
    MASK_CLASS_NAMES = CLASS_NAMES

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """This file; TFDS's own lookup imports `importlib_resources`, which TF does not install."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "segmentation_mask": tfds.features.Image(
                    shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
            }),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            description="PASCAL VOC 2012 segmentation (21 classes, 255 = ignore) with the "
                        "Semantic Boundaries Dataset augmented training set.",
        )

    def _split_generators(self, dl_manager):
        archives = {}
        for key, filename, url in (("voc", VOC_ARCHIVE, VOC_URL), ("sbd", SBD_ARCHIVE, SBD_URL)):
            path = os.path.join(os.fspath(dl_manager.manual_dir), filename)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"voc_sbd: {filename} not found in the manual dir "
                    f"{os.fspath(dl_manager.manual_dir)!r}; download it from {url}\n"
                    + _INSTRUCTIONS)
            archives[key] = path
        extracted = dl_manager.extract(archives)
        voc = os.path.join(os.fspath(extracted["voc"]), *_VOC_ROOT)
        sbd = os.path.join(os.fspath(extracted["sbd"]), *_SBD_ROOT)
        voc_train = _read_ids(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"))
        voc_val = _read_ids(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"))
        sbd_ids = (_read_ids(os.path.join(sbd, "train.txt"))
                   + _read_ids(os.path.join(sbd, "val.txt")))
        val_set = set(voc_val)
        train_aug = sorted((set(sbd_ids) | set(voc_train)) - val_set)
        return {
            "train_aug": self._generate_examples(voc, sbd, train_aug, set(voc_train)),
            "train": self._generate_examples(voc, sbd, voc_train, set(voc_train)),
            "validation": self._generate_examples(voc, sbd, voc_val, val_set),
        }

    def _generate_examples(self, voc, sbd, ids, voc_masks):
        for image_id in ids:
            image = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
            if not os.path.isfile(image):
                image = os.path.join(sbd, "img", f"{image_id}.jpg")
            if image_id in voc_masks:
                mask = read_palette_png(
                    os.path.join(voc, "SegmentationClass", f"{image_id}.png"))
            else:
                mask = read_sbd_mat(os.path.join(sbd, "cls", f"{image_id}.mat"))
            yield image_id, {"image": image, "image/filename": image_id,
                             "segmentation_mask": mask[..., None]}


def read_palette_png(path: str) -> np.ndarray:
    """Reads a VOC palette PNG as its palette indices (uint8 [H, W]).

    Args:
        path: the PNG.

    Returns:
        The class-id map, 255 kept.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
        raise FileNotFoundError(f"voc_sbd: mask {path!r} is missing from the VOC archive")
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"voc_sbd: {path!r} is a {img.mode} image; VOC masks are "
                             "palette ('P') PNGs whose indices are class ids")
        return np.array(img, dtype=np.uint8)


def read_sbd_mat(path: str) -> np.ndarray:
    """Reads `GTcls.Segmentation` from an SBD `cls/*.mat` file (uint8 [H, W]).

    Args:
        path: the .mat file.

    Returns:
        The class-id map.
    """
    from scipy import io as sio  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
        raise FileNotFoundError(f"voc_sbd: mask {path!r} is missing from the SBD archive")
    mat = sio.loadmat(path, squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
        raise ValueError(f"voc_sbd: {path!r} has no GTcls.Segmentation struct field")
    seg = np.asarray(mat["GTcls"].Segmentation)
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise ValueError(f"voc_sbd: {path!r}: GTcls.Segmentation must be a 2-D class map, "
                         f"got shape {seg.shape}")
    return seg.astype(np.uint8)


def _read_ids(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"voc_sbd: split list {path!r} is missing from the archive")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
