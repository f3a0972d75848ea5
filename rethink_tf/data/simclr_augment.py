"""SimCLR's two strongly augmented views of one image (Chen et al. 2020, appendix A).

Each view is, in this order: random resized crop (area and aspect ratio sampled) resized to
the output size, optional horizontal flip, colour jitter (brightness, contrast, saturation,
hue in random order) with probability `color_prob`, grayscale with probability
`grayscale_prob`, Gaussian blur (sigma in [0.1, 2.0], kernel ~10% of the side) with
probability `blur_prob`. Built on `tf.image` ops, so every function works on one unbatched
image eagerly or inside `tf.data`.

Views are float32 [H, W, 3] with pixel values 0..255, as the backbones take them.

The defaults are SimCLR's for 224 px ImageNet photos. Small object-centric images want other
settings (see `experiments/configs/pretrain_simclr.py`): a larger `crop_min_area` so that both
views keep the object, `blur_prob=0` (blur erases thin strokes), and `flip=False` where a
mirror changes the label (`sources.hflip_keeps_labels`: digits and letters).
"""

import tensorflow as tf

from rethink_tf.data import example as ex


def random_resized_crop(image, output_size, *, min_area=0.08, max_area=1.0,
                        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0)):
    """Crops a random window (area fraction and aspect ratio sampled) and resizes it.

    Args:
      image: float32 [H, W, 3].
      output_size: (height, width) of the result.
      min_area, max_area: range of the crop's area as a fraction of the image.
      aspect_ratio_range: range of the crop's width / height.

    Returns:
      float32 [output_height, output_width, 3].
    """
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        min_object_covered=min_area, aspect_ratio_range=aspect_ratio_range,
        area_range=(min_area, max_area), max_attempts=100, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, output_size, method="bicubic", antialias=True)


def _random_apply(fn, prob, image):
    return tf.cond(tf.random.uniform([]) < prob, lambda: fn(image), lambda: image)


def color_jitter(image, strength=0.5):
    """SimCLR's colour distortion: brightness, contrast, saturation, hue in random order.

    Args:
      image: float32 [H, W, 3] in [0, 1].
      strength: s of the paper (ImageNet 1.0; 0.5 for small images, as for CIFAR).

    Returns:
      The distorted image, clipped to [0, 1].
    """
    amount = 0.8 * strength

    def brightness(x):
        # Multiplicative, as in SimCLR's reference implementation.
        factor = tf.random.uniform([], max(0.0, 1.0 - amount), 1.0 + amount)
        return x * factor

    def contrast(x):
        return tf.image.random_contrast(x, max(0.0, 1.0 - amount), 1.0 + amount)

    def saturation(x):
        return tf.image.random_saturation(x, max(0.0, 1.0 - amount), 1.0 + amount)

    def hue(x):
        return tf.image.random_hue(x, min(0.2 * strength, 0.5))

    branches = [brightness, contrast, saturation, hue]
    order = tf.random.shuffle(tf.range(len(branches)))
    for i in range(len(branches)):
        image = tf.switch_case(order[i], [lambda f=f: tf.clip_by_value(f(image), 0.0, 1.0)
                                          for f in branches])
    return image


def to_grayscale(image):
    """Grayscale, kept as 3 channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def gaussian_blur(image, sigma, kernel_size):
    """Separable Gaussian blur with reflect padding (no dark borders).

    Args:
      image: float32 [H, W, C].
      sigma: standard deviation in pixels (scalar tensor or float).
      kernel_size: odd int.

    Returns:
      The blurred image, same shape.
    """
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    vertical = tf.tile(tf.reshape(kernel, [kernel_size, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.tile(tf.reshape(kernel, [1, kernel_size, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                    mode="REFLECT")
    out = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, horizontal, [1, 1, 1, 1], "VALID")
    return out[0]


def simclr_view(image, output_size, *, crop_min_area=0.08, flip=True, color_strength=0.5,
                color_prob=0.8, grayscale_prob=0.2, blur_prob=0.5):
    """One SimCLR view of one image.

    Args:
      image: uint8 or float [H, W, 3] with values 0..255.
      output_size: (height, width) of the view.
      crop_min_area: smallest crop area as a fraction of the image.
      flip: random horizontal flip; False for data whose labels a mirror changes.
      color_strength: colour jitter strength s.
      color_prob, grayscale_prob, blur_prob: probabilities of those distortions.

    Returns:
      float32 [height, width, 3], values 0..255.
    """
    output_size = tuple(int(s) for s in output_size)
    x = tf.cast(image, tf.float32) / 255.0
    x = random_resized_crop(x, output_size, min_area=crop_min_area)
    if flip:
        x = tf.image.random_flip_left_right(x)
    x = _random_apply(lambda y: color_jitter(y, color_strength), color_prob, x)
    x = _random_apply(to_grayscale, grayscale_prob, x)
    kernel_size = max(3, (output_size[0] // 10) | 1)  # odd, ~10% of the side
    sigma = tf.random.uniform([], 0.1, 2.0)
    x = _random_apply(lambda y: gaussian_blur(y, sigma, kernel_size), blur_prob, x)
    x = tf.clip_by_value(x, 0.0, 1.0) * 255.0
    return tf.ensure_shape(x, [output_size[0], output_size[1], 3])


def two_views(image, output_size, **kwargs):
    """Two independent `simclr_view`s of `image` (keyword arguments as there)."""
    return simclr_view(image, output_size, **kwargs), simclr_view(image, output_size, **kwargs)


def make_views_fn(output_size, **kwargs):
    """`fn(canonical example) -> (view1, view2)` for `tf.data.Dataset.map`; labels unused."""
    def fn(example):
        return two_views(example[ex.IMAGE], output_size, **kwargs)
    return fn
