"""Augmentation policies Augment-S1..S4 of the paper, on canonical examples.

  S1: horizontal flip + scale jitter [0.8, 1.2] + crop
  S2: AutoAugment (`detection_v0`) + S1
  S3: AutoAugment + large scale jitter [0.5, 2.0] + flip + crop
  S4: RandAugment (2 layers, magnitude 10) + large scale jitter [0.5, 2.0] + flip + crop

The flip is the dataset's to allow: `augment(..., hflip=False)` (from
`sources.hflip_keeps_labels`) leaves it out of every policy, for data whose labels a mirror
changes (digits, letters); nothing else about the policy changes (the flip's seed is still
split off, so the other decisions stay what they are with the flip on). No op of the
AutoAugment or RandAugment tables mirrors.

Built on tf-models-official (`official.vision.ops`): its AutoAugment and RandAugment policy
tables and magnitude-to-argument rules, its colour ops, its projective `transform`, and
`preprocess_ops.resize_and_crop_image` for scale jitter. What is ours is the part those ops do
not do: every geometric op moves the image, the boxes AND the segmentation mask by one shared
transform (masks with nearest neighbour, filled with 255 = ignore), and out-of-image regions
are filled with a constant (tf-models-official's `translate`/`rotate` default to *reflect*
padding, which would paste copies of objects that have no box).

Every function here works on one (unbatched) canonical example, eagerly or inside `tf.data`.
Randomness is stateless: every random decision is drawn with `tf.random.stateless_*` from a
`seed` (int [2]) split per decision, so an example's augmentation is a pure function of its
seed (the training pipeline derives it from config.seed, the stream and the example counter,
which makes resumed runs and parallel maps reproducible). Without a `seed`, one is drawn from
TensorFlow's global generator (interactive use).
Geometry on boxes: each box's corners go through the same transform; boxes are clipped to the
image and empty ones dropped (with their classes). When an example has a semantic mask whose
class ids are `class + mask_class_offset` (the built-in `digit_scenes` has offset 1), boxes can
be re-tightened to the mask pixels after geometry, since rotating a box's corners loosens it.
"""

import math

import tensorflow as tf
from official.vision.ops import augment as tfm_augment
from official.vision.ops import preprocess_ops

from rethink_tf.data import example as ex

POLICIES = ("s1", "s2", "s3", "s4")

# Fill values for pixels that a geometric op brings in from outside the image.
IMAGE_FILL = 128
MASK_FILL = ex.IGNORE_LABEL

# tf-models-official's translate/cutout constants are in pixels of COCO images (640 px on the
# long side), on which its ops run before resizing; we scale them by the image each op sees.
_REFERENCE_SIZE = 640.0
_AUTOAUGMENT_CUTOUT, _AUTOAUGMENT_TRANSLATE = 100.0, 250.0
_RANDAUGMENT_CUTOUT, _RANDAUGMENT_TRANSLATE = 40.0, 100.0
RANDAUGMENT_LAYERS, RANDAUGMENT_MAGNITUDE = 2, 10.0  # the paper's Augment-S4
_MAX_LEVEL = 10.0  # tf-models-official's level scale

_COLOUR_OPS = frozenset({
    "AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "Grayscale",
})
# Cutout is ours (stateless, and it marks the patch's mask pixels ignore). Gaussian_Noise is
# not supported: tf-models-official draws its sigma with NumPy at trace time (no policy uses it).
_GEOMETRIC_OPS = frozenset({
    "Rotate", "Rotate_BBox", "ShearX", "ShearX_BBox", "ShearY", "ShearY_BBox", "TranslateX",
    "TranslateX_BBox", "TranslateY", "TranslateY_BBox", "TranslateY_Only_BBoxes",
})


# ----------------------------------------------------------------------------------------
# Geometry shared by image, mask and boxes.
# ----------------------------------------------------------------------------------------

def _affine_matrix(name, args, height, width):
    """The 8-vector projective transform (output -> input pixel) of a geometric op."""
    if name.startswith("Rotate"):
        radians = tf.cast(args[0], tf.float32) * (math.pi / 180.0)
        # pylint: disable=protected-access
        return tfm_augment._convert_angles_to_transform(
            radians, tf.cast(width, tf.float32), tf.cast(height, tf.float32))[0]
    if name.startswith("ShearX"):
        level = tf.cast(args[0], tf.float32)
        return tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    if name.startswith("ShearY"):
        level = tf.cast(args[0], tf.float32)
        return tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])
    pixels = tf.cast(args[-1], tf.float32)
    if name.startswith("TranslateX"):
        # Same sign convention as tf-models-official's translate_x: content moves by -pixels.
        return tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])
    return tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0])


def _warp(image, matrix, fill):
    """Applies a projective transform with nearest sampling and a constant fill."""
    return tfm_augment.transform(
        image, matrix, interpolation="nearest", fill_mode="constant", fill_value=fill)


def _warp_mask(mask, matrix):
    # ImageProjectiveTransform has no uint8 kernel for every fill; go through int32.
    warped = _warp(tf.cast(mask, tf.int32), matrix, MASK_FILL)
    return tf.cast(warped, tf.uint8)


def transform_boxes(boxes, matrix):
    """Maps xyxy pixel boxes through the inverse of an output->input transform.

    Each box's four corners are mapped and the enclosing box taken (as tf-models-official does
    for rotation); pixel edges are converted to pixel-centre coordinates and back so that an
    integer translation moves a box by exactly that many pixels.

    Args:
      boxes: float32 [N, 4] xyxy in pixels.
      matrix: float32 [8] projective transform mapping output pixels to input pixels
        (affine part only is used).

    Returns:
      float32 [N, 4] transformed boxes, not clipped.
    """
    a0, a1, a2, b0, b1, b2 = [matrix[i] for i in range(6)]
    det = a0 * b1 - a1 * b0
    # Inverse affine: output = A^-1 (input - t).
    i00, i01, i10, i11 = b1 / det, -a1 / det, -b0 / det, a0 / det
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    # Corners in pixel-centre coordinates: the box [x1, x2) covers centres x1 .. x2 - 1.
    xs = tf.stack([x1, x2 - 1.0, x1, x2 - 1.0], axis=-1) - a2
    ys = tf.stack([y1, y1, y2 - 1.0, y2 - 1.0], axis=-1) - b2
    out_x = i00 * xs + i01 * ys
    out_y = i10 * xs + i11 * ys
    return tf.stack([
        tf.reduce_min(out_x, -1), tf.reduce_min(out_y, -1),
        tf.reduce_max(out_x, -1) + 1.0, tf.reduce_max(out_y, -1) + 1.0,
    ], axis=-1)


def clip_and_filter_boxes(state, height, width, min_size=1.0):
    """Clips boxes to the image and drops those narrower or shorter than `min_size` pixels."""
    boxes = state[ex.BOXES]
    limits = tf.cast(tf.stack([width, height, width, height]), tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, limits)
    keep = tf.logical_and(boxes[:, 2] - boxes[:, 0] >= min_size,
                          boxes[:, 3] - boxes[:, 1] >= min_size)
    state = dict(state)
    state[ex.BOXES] = tf.boolean_mask(boxes, keep)
    state[ex.CLASSES] = tf.boolean_mask(state[ex.CLASSES], keep)
    return state


def tighten_boxes_to_mask(state, mask_class_offset):
    """Shrinks each box to its class's mask pixels inside it; drops boxes with none.

    Args:
      state: canonical example with `boxes`, `classes` and `mask`.
      mask_class_offset: mask id of detection class c is `c + mask_class_offset`.

    Returns:
      The example with tightened boxes (and their classes) kept.
    """
    boxes, classes, mask = state[ex.BOXES], state[ex.CLASSES], state[ex.MASK]
    height, width = tf.shape(mask)[0], tf.shape(mask)[1]
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :]
    inside = ((ys >= tf.floor(boxes[:, 1, None, None])) & (ys < tf.math.ceil(boxes[:, 3, None, None]))
              & (xs >= tf.floor(boxes[:, 0, None, None])) & (xs < tf.math.ceil(boxes[:, 2, None, None])))
    same_class = tf.equal(tf.cast(mask[None, :, :, 0], tf.int32),
                          (classes + mask_class_offset)[:, None, None])
    hit = inside & same_class
    rows = tf.reduce_any(hit, axis=2)
    cols = tf.reduce_any(hit, axis=1)
    keep = tf.reduce_any(rows, axis=1)
    big = tf.constant(1e9)
    row_ids = tf.cast(tf.range(height), tf.float32)[None]
    col_ids = tf.cast(tf.range(width), tf.float32)[None]
    y1 = tf.reduce_min(tf.where(rows, row_ids, big), axis=1)
    y2 = tf.reduce_max(tf.where(rows, row_ids, -big), axis=1) + 1.0
    x1 = tf.reduce_min(tf.where(cols, col_ids, big), axis=1)
    x2 = tf.reduce_max(tf.where(cols, col_ids, -big), axis=1) + 1.0
    tight = tf.stack([x1, y1, x2, y2], axis=-1)
    state = dict(state)
    state[ex.BOXES] = tf.boolean_mask(tight, keep)
    state[ex.CLASSES] = tf.boolean_mask(classes, keep)
    return state


def _geometric_op(state, name, args, seed=None):
    """Applies geometric op `name` to image, mask and boxes with one shared transform."""
    image = state[ex.IMAGE]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    matrix = _affine_matrix(name, args, height, width)
    state = dict(state)
    if name == "TranslateY_Only_BBoxes":
        return _translate_inside_boxes(state, matrix, prob=args[0], seed=seed)
    state[ex.IMAGE] = _warp(image, matrix, IMAGE_FILL)
    if ex.MASK in state:
        state[ex.MASK] = _warp_mask(state[ex.MASK], matrix)
    if ex.BOXES in state:
        state[ex.BOXES] = transform_boxes(state[ex.BOXES], matrix)
    return state


def _translate_inside_boxes(state, matrix, prob, seed=None):
    """AutoAugment's `TranslateY_Only_BBoxes`: moves the content inside each box.

    Each box is chosen with probability prob / 3 (tf-models-official's rule); its content is
    shifted vertically within the box, and the box itself stays where it is.
    """
    if ex.BOXES not in state:
        return state
    # pylint: disable=protected-access
    prob = tfm_augment._scale_bbox_only_op_probability(prob)
    image = state[ex.IMAGE]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    shifted_image = _warp(image, matrix, IMAGE_FILL)
    has_mask = ex.MASK in state
    shifted_mask = _warp_mask(state[ex.MASK], matrix) if has_mask else None
    dy = tf.cast(matrix[5], tf.float32)
    ys = tf.cast(tf.range(height), tf.float32)[:, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, :]
    coins = tf.random.stateless_uniform([tf.shape(state[ex.BOXES])[0]], _seed_or_draw(seed))

    def one_box(carry, box_and_coin):
        img, msk = carry
        box, coin = box_and_coin
        x1, y1, x2, y2 = tf.floor(box[0]), tf.floor(box[1]), tf.math.ceil(box[2]), tf.math.ceil(box[3])
        region = (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)
        source_inside = (ys + dy >= y1) & (ys + dy < y2)
        chosen = coin < prob
        moved = region & source_inside & chosen
        emptied = region & tf.logical_not(source_inside) & chosen
        img = tf.where(moved[..., None], shifted_image, img)
        img = tf.where(emptied[..., None], tf.cast(IMAGE_FILL, img.dtype), img)
        if has_mask:
            msk = tf.where(moved[..., None], shifted_mask, msk)
            msk = tf.where(emptied[..., None], tf.cast(MASK_FILL, msk.dtype), msk)
        return img, msk

    mask0 = state[ex.MASK] if has_mask else tf.zeros([0], tf.uint8)
    img, msk = tf.foldl(one_box, (state[ex.BOXES], coins), initializer=(image, mask0))
    state[ex.IMAGE] = img
    if has_mask:
        state[ex.MASK] = msk
    return state


def cutout(state, pad_size, seed=None):
    """Greys out a (2 pad_size)^2 square at a random centre; its mask pixels become ignore.

    As tf-models-official's `cutout` (centre uniform over the image, square clipped to the
    image, filled with 128), but stateless, and the labels under the patch are set to 255
    (ignore) since the object there can no longer be seen. Boxes are left as they are.

    Args:
      state: canonical example.
      pad_size: half the side of the square, in pixels (int scalar, may be a tensor).
      seed: int [2] stateless seed.

    Returns:
      The example with the patch applied to image and mask.
    """
    image = state[ex.IMAGE]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seed_y, seed_x = _split(_seed_or_draw(seed), 2)
    cy = tf.random.stateless_uniform([], seed_y, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seed_x, 0, width, dtype=tf.int32)
    pad = tf.cast(pad_size, tf.int32)
    ys = tf.range(height)[:, None]
    xs = tf.range(width)[None, :]
    patch = (ys >= cy - pad) & (ys < cy + pad) & (xs >= cx - pad) & (xs < cx + pad)
    state = dict(state)
    state[ex.IMAGE] = tf.where(patch[..., None], tf.cast(IMAGE_FILL, image.dtype), image)
    if ex.MASK in state:
        mask = state[ex.MASK]
        state[ex.MASK] = tf.where(patch[..., None], tf.cast(MASK_FILL, mask.dtype), mask)
    return state


# ----------------------------------------------------------------------------------------
# Stateless seeds.
# ----------------------------------------------------------------------------------------

def _seed_or_draw(seed):
    """`seed` as int64 [2]; without one, a seed drawn from the global generator."""
    if seed is None:
        return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    return tf.cast(seed, tf.int64)


def _split(seed, num):
    """`num` independent stateless seeds from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _coin(seed, prob):
    return tf.random.stateless_uniform([], seed) < prob


# ----------------------------------------------------------------------------------------
# Policies: which op, with which arguments (tf-models-official's tables and rules).
# ----------------------------------------------------------------------------------------

# Magnitude at level 10 of the ops whose sign tf-models-official flips at random.
_SIGNED_MAGNITUDES = {
    "Rotate": 30.0, "Rotate_BBox": 30.0, "ShearX": 0.3, "ShearX_BBox": 0.3, "ShearY": 0.3,
    "ShearY_BBox": 0.3, "TranslateY_Only_BBoxes": 120.0,
}
_TRANSLATE_OPS = frozenset({"TranslateX", "TranslateY", "TranslateX_BBox", "TranslateY_BBox"})


def _constants(base_cutout, base_translate, image):
    """Cutout and translate constants scaled to the image the op sees (dynamic shape)."""
    long_side = tf.cast(tf.reduce_max(tf.shape(image)[:2]), tf.float32)
    scale = long_side / _REFERENCE_SIZE
    return tf.maximum(1.0, base_cutout * scale), base_translate * scale


def _op_args(name, prob, level, cutout_const, translate_const, seed=None):
    """Arguments of op `name` at `level`, by tf-models-official's level_to_arg rules.

    The rules are tf-models-official's, reimplemented where they draw random numbers (the
    50% sign flip of rotate/shear/translate) or need Python numbers (cutout's int size), so
    that the sign comes from `seed` and the constants may be tensors.
    """
    if name in _SIGNED_MAGNITUDES or name in _TRANSLATE_OPS:
        top = translate_const if name in _TRANSLATE_OPS else _SIGNED_MAGNITUDES[name]
        magnitude = tf.cast(level / _MAX_LEVEL * top, tf.float32)
        sign = tf.where(_coin(_seed_or_draw(seed), 0.5), 1.0, -1.0)
        args = (magnitude * sign,)
    elif name == "Cutout":
        args = (tf.cast(tf.floor(level / _MAX_LEVEL * cutout_const), tf.int32),)
    else:
        args = tfm_augment.level_to_arg(cutout_const, translate_const)[name](level)
    if name in tfm_augment.PROB_FUNCS:
        args = (prob,) + tuple(args)
    return tuple(args)


def apply_op(state, name, args, seed=None):
    """Applies one named AutoAugment/RandAugment op to a canonical example.

    Args:
      state: canonical example.
      name: tf-models-official op name (e.g. "Rotate_BBox", "Cutout", "Color").
      args: the op's arguments (see `_op_args`).
      seed: int [2] stateless seed for the ops that draw (Cutout, TranslateY_Only_BBoxes).
    """
    if name in _GEOMETRIC_OPS:
        return _geometric_op(state, name, args, seed)
    if name == "Cutout":
        return cutout(state, args[0], seed)
    if name not in _COLOUR_OPS:
        raise ValueError(f"augmentation op {name!r} is not supported; known: "
                         f"{sorted(_COLOUR_OPS | _GEOMETRIC_OPS | {'Cutout'})}")
    func = tfm_augment.NAME_TO_FUNC[name]
    if name in tfm_augment.REPLACE_FUNCS:
        args = tuple(args) + (IMAGE_FILL,)
    state = dict(state)
    # Colour ops never touch masks or boxes.
    state[ex.IMAGE] = func(state[ex.IMAGE], *args)
    return state


def autoaugment_detection(state, seed=None):
    """AutoAugment `detection_v0`: one random sub-policy, each op applied with its prob.

    Args:
      state: canonical example.
      seed: int [2] stateless seed (one is drawn when None).
    """
    policy = tfm_augment.AutoAugment.detection_policy_v0()
    state = _as_uint8_image(state)
    cutout_const, translate_const = _constants(
        _AUTOAUGMENT_CUTOUT, _AUTOAUGMENT_TRANSLATE, state[ex.IMAGE])
    longest = max(len(p) for p in policy)
    choose_seed, *op_seeds = _split(_seed_or_draw(seed), 1 + 3 * longest)

    def sub_policy_fn(sub_policy):
        def run():
            out = state
            for i, (name, prob, level) in enumerate(sub_policy):
                coin_seed, arg_seed, op_seed = op_seeds[3 * i:3 * i + 3]
                args = _op_args(name, prob, float(level), cutout_const, translate_const,
                                arg_seed)
                if name in tfm_augment.PROB_FUNCS:
                    out = apply_op(out, name, args, op_seed)  # per-box coins inside
                else:
                    out = tf.cond(_coin(coin_seed, prob),
                                  lambda o=out, n=name, a=args, s=op_seed: apply_op(o, n, a, s),
                                  lambda o=out: o)
            return out
        return run

    index = tf.random.stateless_uniform([], choose_seed, 0, len(policy), dtype=tf.int32)
    return tf.switch_case(index, [sub_policy_fn(p) for p in policy])


def randaugment_detection(state, seed=None, num_layers=RANDAUGMENT_LAYERS,
                          magnitude=RANDAUGMENT_MAGNITUDE):
    """RandAugment with box- and mask-aware geometry: `num_layers` random ops at `magnitude`.

    Args:
      state: canonical example.
      seed: int [2] stateless seed (one is drawn when None).
      num_layers: ops applied in sequence.
      magnitude: level of every op (tf-models-official's 0..10 scale).
    """
    ops = tfm_augment.RandAugment.build_for_detection(
        num_layers=num_layers, magnitude=magnitude).available_ops
    state = _as_uint8_image(state)
    layer_seeds = _split(_seed_or_draw(seed), num_layers)
    for layer_seed in layer_seeds:
        # Constants follow the image the op sees (an earlier layer keeps its size).
        cutout_const, translate_const = _constants(
            _RANDAUGMENT_CUTOUT, _RANDAUGMENT_TRANSLATE, state[ex.IMAGE])
        choose_seed, arg_seed, op_seed = _split(layer_seed, 3)
        # As in tf-models-official: one extra index means "identity".
        index = tf.random.stateless_uniform([], choose_seed, 0, len(ops) + 1, dtype=tf.int32)
        branches = []
        for name in ops:
            branches.append(
                lambda s=state, n=name: apply_op(
                    s, n, _op_args(n, 1.0, magnitude, cutout_const, translate_const, arg_seed),
                    op_seed))
        branches.append(lambda s=state: s)
        state = tf.switch_case(index, branches)
    return state


def _as_uint8_image(state):
    image = state[ex.IMAGE]
    if image.dtype != tf.uint8:
        state = dict(state)
        state[ex.IMAGE] = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    return state


# ----------------------------------------------------------------------------------------
# Flip, scale jitter and crop (tf-models-official's preprocess_ops).
# ----------------------------------------------------------------------------------------

def random_horizontal_flip(state, prob=0.5, seed=None):
    """Flips image, mask and boxes together with probability `prob`."""
    flip = _coin(_seed_or_draw(seed), prob)
    state = dict(state)
    width = tf.cast(tf.shape(state[ex.IMAGE])[1], tf.float32)
    state[ex.IMAGE] = tf.cond(flip, lambda: state[ex.IMAGE][:, ::-1], lambda: state[ex.IMAGE])
    if ex.MASK in state:
        state[ex.MASK] = tf.cond(flip, lambda: state[ex.MASK][:, ::-1], lambda: state[ex.MASK])
    if ex.BOXES in state:
        boxes = state[ex.BOXES]
        flipped = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1)
        state[ex.BOXES] = tf.cond(flip, lambda: flipped, lambda: boxes)
    return state


def _jittered_resize_and_crop_image(image, output_size, scale_min, scale_max, seed):
    """`preprocess_ops.resize_and_crop_image` with scale and crop offset drawn from `seed`.

    The same arithmetic as tf-models-official's (which draws both with stateful ops).
    """
    scale_seed, offset_seed = _split(seed, 2)
    image_size = tf.cast(tf.shape(image)[0:2], tf.float32)
    desired = tf.constant(output_size, tf.float32)
    random_scale = tf.random.stateless_uniform([], scale_seed, scale_min, scale_max)
    scaled_size = tf.round(random_scale * desired)
    scale = tf.minimum(scaled_size[0] / image_size[0], scaled_size[1] / image_size[1])
    scaled_size = tf.round(image_size * scale)
    image_scale = scaled_size / image_size
    max_offset = tf.maximum(scaled_size - desired, 0.0)
    offset = tf.cast(max_offset * tf.random.stateless_uniform([2], offset_seed), tf.int32)
    scaled = tf.image.resize(image, tf.cast(scaled_size, tf.int32))
    scaled = scaled[offset[0]:offset[0] + output_size[0], offset[1]:offset[1] + output_size[1]]
    out = tf.image.pad_to_bounding_box(scaled, 0, 0, output_size[0], output_size[1])
    image_info = tf.stack([image_size, desired, image_scale, tf.cast(offset, tf.float32)])
    return out, image_info


def resize_and_crop(state, output_size, scale_min=1.0, scale_max=1.0, seed=None):
    """Scale-jitters, crops and pads image, mask and boxes to `output_size` (RetinaNet style).

    The image is resized so that it fits `output_size` times a random scale in
    [scale_min, scale_max] (aspect ratio kept), a random `output_size` window is cut from it
    when it is larger, and it is padded at the bottom and right when smaller: image with 0,
    mask with 255 (ignore). With scale 1 this is the plain resize-and-pad of evaluation.

    Args:
      state: canonical example.
      output_size: (height, width).
      scale_min, scale_max: scale jitter range.
      seed: int [2] stateless seed of scale and crop offset (drawn when None and jittering).

    Returns:
      The example at `output_size`, with `image_info` float32 [4, 2] as tf-models-official
      defines it: [[orig_h, orig_w], [output_h, output_w], [y_scale, x_scale],
      [y_offset, x_offset]]; the resized image is round(orig * scale) before crop/pad, and
      the scale and offset map predictions back to original pixels.
    """
    output_size = list(output_size)
    if math.isclose(scale_min, 1.0) and math.isclose(scale_max, 1.0):
        # No randomness: tf-models-official's own function (evaluation, export).
        image, image_info = preprocess_ops.resize_and_crop_image(
            state[ex.IMAGE], output_size, output_size)
    else:
        image, image_info = _jittered_resize_and_crop_image(
            state[ex.IMAGE], output_size, scale_min, scale_max, _seed_or_draw(seed))
    image_scale, offset = image_info[2], image_info[3]
    state = dict(state)
    state[ex.IMAGE] = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    state["image_info"] = image_info
    if ex.MASK in state:
        # Shift ids by one so that zero padding can be told apart, then map padding to 255.
        shifted = tf.cast(state[ex.MASK], tf.int32)[None] + 1
        resized = preprocess_ops.resize_and_crop_masks(shifted, image_scale, output_size, offset)[0]
        state[ex.MASK] = tf.cast(tf.where(resized == 0, MASK_FILL, resized - 1), tf.uint8)
    if ex.BOXES in state:
        boxes = state[ex.BOXES]
        yxyx = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], -1)
        yxyx = preprocess_ops.resize_and_crop_boxes(yxyx, image_scale, output_size, offset)
        state[ex.BOXES] = tf.stack([yxyx[:, 1], yxyx[:, 0], yxyx[:, 3], yxyx[:, 2]], -1)
    return state


# ----------------------------------------------------------------------------------------
# The four strengths.
# ----------------------------------------------------------------------------------------

SCALE_RANGES = {"s1": (0.8, 1.2), "s2": (0.8, 1.2), "s3": (0.5, 2.0), "s4": (0.5, 2.0)}
_SCALE_RANGES = SCALE_RANGES  # former private name


def _finish(state, output_size, mask_class_offset):
    if ex.BOXES in state:
        state = clip_and_filter_boxes(state, output_size[0], output_size[1])
        if mask_class_offset is not None and ex.MASK in state:
            state = tighten_boxes_to_mask(state, mask_class_offset)
    return state


def augment(state, policy, output_size, *, mask_class_offset=None, seed=None, hflip=True):
    """Applies augmentation strength `policy` (s1..s4) to one canonical example.

    Args:
      state: canonical example (`image` uint8 [H, W, 3], optional `boxes`/`classes`, `mask`).
      policy: one of "s1", "s2", "s3", "s4".
      output_size: (height, width) of the output.
      mask_class_offset: if set and the example has a mask, boxes are re-tightened to the
        mask pixels of class `c + mask_class_offset` after geometry.
      seed: int [2] stateless seed; the output is a pure function of it (one is drawn from
        the global generator when None).
      hflip: the policy's random horizontal flip; False for data whose labels a mirror
        changes (`sources.hflip_keeps_labels`). With False, an example comes out exactly as
        with True whenever the flip's coin says "no flip", and is never mirrored.

    Returns:
      The augmented example at `output_size`, plus `image_info`.
    """
    if policy not in POLICIES:
        raise ValueError(f"augment policy {policy!r} is not one of {POLICIES}")
    output_size = tuple(int(s) for s in output_size)
    policy_seed, flip_seed, resize_seed = _split(_seed_or_draw(seed), 3)
    state = _as_uint8_image(state)
    if policy in ("s2", "s3"):
        state = autoaugment_detection(state, policy_seed)
        state = _clip_mid(state)
    elif policy == "s4":
        state = randaugment_detection(state, policy_seed)
        state = _clip_mid(state)
    if hflip:
        state = random_horizontal_flip(state, seed=flip_seed)
    scale_min, scale_max = SCALE_RANGES[policy]
    state = resize_and_crop(state, output_size, scale_min, scale_max, seed=resize_seed)
    return _finish(state, output_size, mask_class_offset)


def _clip_mid(state):
    if ex.BOXES not in state:
        return state
    shape = tf.shape(state[ex.IMAGE])
    return clip_and_filter_boxes(state, shape[0], shape[1])


def eval_resize(state, output_size):
    """Evaluation preprocessing: resize to fit `output_size` (aspect kept) and pad."""
    output_size = tuple(int(s) for s in output_size)
    state = resize_and_crop(_as_uint8_image(state), output_size)
    return _finish(state, output_size, None)


def make_augment_fn(policy, output_size, *, training=True, mask_class_offset=None,
                    hflip=True):
    """Returns `fn(example, seed=None) -> example` for `tf.data.Dataset.map`.

    Args:
      policy: "s1".."s4" (ignored when `training` is False).
      output_size: (height, width).
      training: False gives the evaluation resize-and-pad.
      mask_class_offset: see `augment`.
      hflip: whether the policy may flip horizontally (see `augment`).
    """
    if training and policy not in POLICIES:
        raise ValueError(f"augment policy {policy!r} is not one of {POLICIES}")

    def fn(example, seed=None):
        if training:
            return augment(example, policy, output_size, mask_class_offset=mask_class_offset,
                           seed=seed, hflip=hflip)
        return eval_resize(example, output_size)
    return fn
