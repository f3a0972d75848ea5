"""Tests for the `voc_sbd` TFDS builder on tiny fixture archives made here."""
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from scipy import io as sio

from rethink_tf.data import sources
from rethink_tf.data import voc

H, W = 32, 40
# VOC ids: train {a, b}, val {c}; SBD train {b, c, d}, SBD val {e}.
VOC_TRAIN, VOC_VAL = ["2008_000001", "2008_000002"], ["2008_000003"]
SBD_TRAIN, SBD_VAL = ["2008_000002", "2008_000003", "2008_000004"], ["2008_000005"]


def _voc_mask(seed):
    """A class map with a 255 border, as VOC draws object outlines."""
    mask = np.zeros((H, W), np.uint8)
    mask[4:20, 5:25] = seed % 20 + 1
    mask[22:30, 30:38] = (seed + 7) % 20 + 1
    mask[3, 5:25] = 255
    return mask


def _sbd_mask(seed):
    mask = np.zeros((H, W), np.uint8)
    mask[10:28, 2:15] = (seed * 3) % 20 + 1
    return mask


def _palette():
    """The VOC colour map: index i -> its colour (so RGB values differ from indices)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal.flatten().tolist()


def _seed(image_id):
    return int(image_id[-1])


def _make_archives(root, *, with_sbd=True):
    """Writes VOCtrainval_11-May-2012.tar and benchmark.tgz into `root/manual`."""
    manual = root / "manual"
    manual.mkdir()
    voc_dir = root / "voc" / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True)
    for image_id in VOC_TRAIN + VOC_VAL:
        Image.fromarray(np.full((H, W, 3), _seed(image_id) * 20, np.uint8)).save(
            voc_dir / "JPEGImages" / f"{image_id}.jpg")
        png = Image.fromarray(_voc_mask(_seed(image_id)), mode="P")
        png.putpalette(_palette())
        png.save(voc_dir / "SegmentationClass" / f"{image_id}.png")
    (voc_dir / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc_dir / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    with tarfile.open(manual / voc.VOC_ARCHIVE, "w") as tar:
        tar.add(root / "voc" / "VOCdevkit", arcname="VOCdevkit")
    if not with_sbd:
        return manual
    sbd_dir = root / "sbd" / "benchmark_RELEASE" / "dataset"
    (sbd_dir / "img").mkdir(parents=True)
    (sbd_dir / "cls").mkdir()
    for image_id in SBD_TRAIN + SBD_VAL:
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(sbd_dir / "img" / f"{image_id}.jpg")
        # The SBD layout: a 1x1 struct GTcls with fields Segmentation, Boundaries, ...
        sio.savemat(sbd_dir / "cls" / f"{image_id}.mat", {"GTcls": {
            "Segmentation": _sbd_mask(_seed(image_id)),
            "CategoriesPresent": np.array([[(_seed(image_id) * 3) % 20 + 1]], np.uint8),
            "Boundaries": np.zeros((20, 1), dtype=object)}})
    (sbd_dir / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd_dir / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    with tarfile.open(manual / voc.SBD_ARCHIVE, "w:gz") as tar:
        tar.add(root / "sbd" / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    return manual


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    manual = _make_archives(root)
    data_dir = str(root / "tfds")
    builder = tfds.builder("voc_sbd", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder, data_dir


def _split(builder, split):
    return {e["image/filename"].decode(): e for e in tfds.as_numpy(builder.as_dataset(split))}


def test_split_membership(prepared):
    builder, _ = prepared
    assert sorted(_split(builder, "train")) == VOC_TRAIN
    assert sorted(_split(builder, "validation")) == VOC_VAL
    # (SBD train + val + VOC train) minus VOC val.
    assert sorted(_split(builder, "train_aug")) == [
        "2008_000001", "2008_000002", "2008_000004", "2008_000005"]


def test_masks_keep_palette_indices_and_ignore_and_read_sbd_mats(prepared):
    builder, _ = prepared
    aug = _split(builder, "train_aug")
    for image_id, e in aug.items():
        assert e["segmentation_mask"].shape == (H, W, 1)
        assert e["segmentation_mask"].dtype == np.uint8
        assert e["image"].shape == (H, W, 3)
        # VOC masks win over SBD's for images in both (2008_000002).
        expected = (_voc_mask if image_id in VOC_TRAIN else _sbd_mask)(_seed(image_id))
        np.testing.assert_array_equal(e["segmentation_mask"][..., 0], expected)
    assert 255 in aug["2008_000001"]["segmentation_mask"]
    val = _split(builder, "validation")["2008_000003"]["segmentation_mask"][..., 0]
    np.testing.assert_array_equal(val, _voc_mask(3))


def test_load_through_sources_gives_canonical_masks(prepared):
    _, data_dir = prepared
    ds = sources.load("voc_sbd", "validation", data_dir=data_dir)
    assert set(ds.element_spec) == {"image", "mask", "source_id"}
    (e,) = list(tfds.as_numpy(ds))
    assert e["source_id"] == b"2008_000003"
    np.testing.assert_array_equal(e["mask"][..., 0], _voc_mask(3))
    info = sources.info("voc_sbd", data_dir=data_dir)
    assert info.tasks == ("segmentation",) and info.num_classes == {"segmentation": 21}
    assert info.class_names["segmentation"][15] == "person"
    assert set(info.splits) == {"train_aug", "train", "validation"}


def test_missing_archive_names_the_file_and_url(tmp_path):
    manual = _make_archives(tmp_path, with_sbd=False)
    builder = tfds.builder("voc_sbd", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match=r"benchmark.tgz not found.*semantic_contours"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def test_readers_reject_rgb_pngs_and_bad_mats(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="palette"):
        voc.read_palette_png(str(tmp_path / "rgb.png"))
    sio.savemat(tmp_path / "x.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="GTcls.Segmentation"):
        voc.read_sbd_mat(str(tmp_path / "x.mat"))
