"""The canonical example that every source yields (see shared/design.md).

Keys:
    image:     uint8 [H, W, 3]
    boxes:     float32 [N, 4], absolute pixels, xyxy            (detection)
    classes:   int32 [N], contiguous ids starting at 0           (detection)
    mask:      uint8 [H, W, 1], class ids, 255 = ignore          (segmentation)
    label:     int32 [], class id                                (classification)
    source_id: string [], stable and unique within the dataset
    image/encoded: string [], the source's own encoded bytes of `image` (optional: only TFDS
               sources with `sources.load(..., keep_encoded=True)`; PNG, JPEG, GIF or BMP)
"""

IMAGE = "image"
BOXES = "boxes"
CLASSES = "classes"
MASK = "mask"
LABEL = "label"
SOURCE_ID = "source_id"
ENCODED = "image/encoded"

IGNORE_LABEL = 255

ALL_KEYS = (IMAGE, BOXES, CLASSES, MASK, LABEL, SOURCE_ID, ENCODED)

# Leading bytes of the encodings `tf.io.decode_image` reads, by format name.
ENCODED_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG", "gif": b"GIF8", "bmp": b"BM"}


def encoded_format(data: bytes):
    """The format name of encoded image bytes ('jpeg', 'png', 'gif', 'bmp'), or None."""
    for name, magic in ENCODED_MAGIC.items():
        if data[:len(magic)] == magic:
            return name
    return None


def check_finite_boxes(boxes, source_id, where):
    """`boxes` (float [N, 4]), with a check at run time that every coordinate is finite.

    A NaN or infinite coordinate would otherwise surface steps later as an obscure error in
    anchor matching (or as a NaN loss); this names the input and the example instead.
    Usable inside `tf.data` map functions.

    Args:
        boxes: float [N, 4] boxes.
        source_id: string [] tensor, the example's `source_id`.
        where: the input's name for the message (a dataset, a pseudo-label directory).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    check = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(boxes)),
        [f"{where}: example", source_id,
         "has a box with a non-finite coordinate (NaN or inf); fix or drop its boxes. Boxes:",
         boxes], summarize=40)
    with tf.control_dependencies([check]):
        return tf.identity(boxes)


def check_example_spec(element_spec, name="dataset"):
    """Raises ValueError if `element_spec` is not a canonical example spec.

    Args:
        element_spec: `tf.data.Dataset.element_spec` (a dict of TensorSpecs).
        name: the dataset's name, for the error message.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not isinstance(element_spec, dict):
        raise ValueError(f"{name}: expected dict examples, got {element_spec!r}")
    unknown = set(element_spec) - set(ALL_KEYS)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; canonical keys are {ALL_KEYS}")
    expected = {IMAGE: (tf.uint8, 3), BOXES: (tf.float32, 2), CLASSES: (tf.int32, 1),
                MASK: (tf.uint8, 3), LABEL: (tf.int32, 0), SOURCE_ID: (tf.string, 0),
                ENCODED: (tf.string, 0)}
    for key in (IMAGE, SOURCE_ID):
        if key not in element_spec:
            raise ValueError(f"{name}: every example needs '{key}'")
    for key, spec in element_spec.items():
        dtype, rank = expected[key]
        if spec.dtype != dtype or spec.shape.rank != rank:
            raise ValueError(f"{name}: '{key}' must be {dtype.name} of rank {rank}, got {spec}")
