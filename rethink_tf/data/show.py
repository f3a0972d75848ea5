r"""Draws a grid of augmented examples with their boxes and masks: what the model sees.

  python -m rethink_tf.data.show --dataset=digit_scenes/detection --policy=s4 --out=grid.png

Each cell is one augmented training example: boxes with class names over the image, and the
segmentation mask (if the dataset has one) blended in colour, ignore pixels (255) in grey; a
classification example has its class name in the top-left corner. Policies flip only where
the dataset allows it (`sources.hflip_keeps_labels`), as training does.

  python -m rethink_tf.data.show --dataset=digit_scenes/glyphs --policy=none --rows=6 \
      --cols=12 --image_size=64 --out=glyphs_grid.png
"""

import colorsys

import numpy as np
from absl import app
from absl import flags
from PIL import Image
from PIL import ImageDraw


def palette(num_classes):
    """Distinct RGB colours, one per class."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(num_classes, 1), 0.9, 1.0))
            for i in range(num_classes)]


def draw_example(image, boxes=None, classes=None, mask=None, class_names=None,
                 mask_alpha=0.45, label=None):
    """Renders one example as a PIL image.

    Args:
      image: uint8 [H, W, 3].
      boxes: float [N, 4] xyxy pixels (rows with class < 0 are padding and skipped).
      classes: int [N].
      mask: int [H, W] or [H, W, 1] class ids, 255 = ignore.
      class_names: names of the classes (detection or classification).
      mask_alpha: opacity of the mask overlay.
      label: a classification example's class id, written in the top-left corner.

    Returns:
      `PIL.Image`.
    """
    image = np.asarray(image, np.uint8)
    canvas = image.astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask).reshape(image.shape[:2]).astype(np.int64)
        colours = np.array(palette(max(int(mask[mask != 255].max(initial=0)) + 1, 2)), np.float32)
        overlay = np.zeros_like(canvas)
        labelled = (mask > 0) & (mask != 255)
        overlay[labelled] = colours[mask[labelled]]
        overlay[mask == 255] = 128.0
        blend = labelled | (mask == 255)
        canvas[blend] = (1 - mask_alpha) * canvas[blend] + mask_alpha * overlay[blend]
    pil = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    if boxes is not None:
        draw = ImageDraw.Draw(pil)
        n_colours = max(len(class_names or []), 10)
        colours = palette(n_colours)
        for box, cls in zip(np.asarray(boxes), np.asarray(classes)):
            cls = int(cls)
            if cls < 0:
                continue
            colour = colours[cls % n_colours]
            draw.rectangle([float(v) for v in box], outline=colour, width=1)
            name = class_names[cls] if class_names and cls < len(class_names) else str(cls)
            draw.text((float(box[0]) + 1, float(box[1])), name, fill=colour)
    if label is not None:
        label = int(label)
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        draw = ImageDraw.Draw(pil)
        # White text on a black tag reads on any background.
        draw.rectangle([0, 0, 6 * len(name) + 2, 10], fill=(0, 0, 0))
        draw.text((1, -1), name, fill=(255, 255, 255))
    return pil


def grid(cells, cols, pad=2):
    """Tiles equally sized PIL images into one image."""
    width, height = cells[0].size
    rows = (len(cells) + cols - 1) // cols
    out = Image.new("RGB", (cols * (width + pad) + pad, rows * (height + pad) + pad), (255,) * 3)
    for i, cell in enumerate(cells):
        out.paste(cell, (pad + (i % cols) * (width + pad), pad + (i // cols) * (height + pad)))
    return out


def render(dataset, split, policy, out, *, rows=4, cols=6, image_size=128, seed=0,
           data_dir=None, hflip=None):
    """Writes a grid of `rows * cols` augmented examples of `dataset` to `out` (PNG).

    Args:
      dataset: a source name (see `sources.load`).
      split: the split to draw from.
      policy: s1..s4, or 'none' for the evaluation resize.
      out: the PNG path.
      rows, cols: grid shape.
      image_size: side of each cell.
      seed: TensorFlow's global seed (the augmentations drawn).
      data_dir: TFDS data dir.
      hflip: whether policies may flip; None follows `sources.hflip_keeps_labels(dataset)`.

    Returns:
      `out`.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top

    tf.random.set_seed(seed)
    src_info = sources.info(dataset, data_dir=data_dir)
    examples = sources.load(dataset, split, data_dir=data_dir)
    spec = examples.element_spec
    task = "detection" if "boxes" in spec else ("segmentation" if "mask" in spec else
                                                 "classification")
    class_names = list(src_info.class_names.get(task, ()))
    if hflip is None:
        hflip = sources.hflip_keeps_labels(dataset)
    if "mask" in spec and task == "detection":
        # The detection pipeline drops masks; augment them alongside so they can be drawn.
        model_examples = _with_masks(examples, image_size, policy, src_info.mask_class_offset,
                                     hflip)
    else:
        model_examples = pipelines.preprocess(
            examples, task, image_size=image_size, policy="s1" if policy == "none" else policy,
            training=policy != "none", hflip=hflip)
    cells = []
    for item in model_examples.take(rows * cols):
        item = tf.nest.map_structure(lambda t: t.numpy(), item)
        boxes = item.get("bounding_boxes", {}).get("boxes")
        classes = item.get("bounding_boxes", {}).get("classes")
        mask = item.get("segmentation_masks")
        cells.append(draw_example(item["images"], boxes, classes, mask, class_names,
                                  label=item.get("labels")))
    if not cells:
        raise ValueError(f"{dataset} split {split!r} is empty")
    grid(cells, cols).save(out)
    return out


def _with_masks(examples, image_size, policy, mask_class_offset, hflip=True):
    """Augments detection examples keeping their masks (for display only)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import augment  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    fn = augment.make_augment_fn("s1" if policy == "none" else policy, (image_size, image_size),
                                 training=policy != "none", mask_class_offset=mask_class_offset,
                                 hflip=hflip)

    def to_cell(example):
        example = {k: v for k, v in example.items() if k in ("image", "boxes", "classes", "mask")}
        out = fn(example)
        row = pipelines.to_model_example(out, "detection")
        row["segmentation_masks"] = tf.cast(out["mask"], tf.int32)
        return row

    return examples.map(to_cell)


FLAGS = flags.FLAGS


def define_flags():
    """Defines the command-line flags.

    Only when run as a program: the trainer imports this module for `draw_example`, and
    flags defined at import would clash with the importing main's (--split, --seed, ...).
    """
    flags.DEFINE_string("dataset", "digit_scenes/detection", "Source name (see sources).")
    flags.DEFINE_string("split", "train", "Split to draw from.")
    flags.DEFINE_enum("policy", "s4", ["s1", "s2", "s3", "s4", "none"],
                      "Augmentation strength; 'none' is the evaluation resize.")
    flags.DEFINE_string("out", "grid.png", "Output PNG path.")
    flags.DEFINE_integer("rows", 4, "Grid rows.")
    flags.DEFINE_integer("cols", 6, "Grid columns.")
    flags.DEFINE_integer("image_size", 128, "Model input size in pixels.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")
    flags.DEFINE_enum("hflip", "auto", ["auto", "true", "false"],
                      "Whether policies may flip horizontally; 'auto' follows the dataset "
                      "(sources.hflip_keeps_labels).")


def main(argv):
    """Renders the grid the flags describe."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    path = render(FLAGS.dataset, FLAGS.split, FLAGS.policy, FLAGS.out, rows=FLAGS.rows,
                  cols=FLAGS.cols, image_size=FLAGS.image_size, seed=FLAGS.seed,
                  data_dir=FLAGS.data_dir,
                  hflip=None if FLAGS.hflip == "auto" else FLAGS.hflip == "true")
    print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
