"""Pure NumPy/PIL rendering of the glyph corpus: typeset alphanumerics on real photos.

The corpus (`digit_scenes/glyphs`) is to the digit scenes what ImageNet is to COCO: a larger
label space of its own (62 classes: `0-9`, `A-Z`, `a-z`, in that order, so class c < 10 is
digit c) that only partly overlaps the scenes' 10 digit classes, object-centric (one glyph per
image), on the same texture photographs (`scene_render.random_background`).

Fonts: the TrueType files that ship inside the matplotlib wheel (`FONT_FILES`: DejaVu Sans,
Serif and Sans Mono in regular, bold, oblique/italic and bold oblique/italic; STIX General in
the same four styles; Computer Modern roman, bold, italic, math italic, sans and typewriter).
Symbol fonts (`cmex10`, `cmsy10`, STIX size variants) and the Last Resort font are left out:
they map letters to other shapes. A font missing from an installed matplotlib is skipped.

One image: a random texture crop; a font drawn uniformly; a font size (em, pixels) drawn
uniformly from `font_size_range`, so a lowercase letter stays smaller than its capital (the
only cue between `o` and `O`); an extra stroke width of 0 to about em / 20 pixels (bolder
strokes); a random affine (rotation within +-`max_rotation` degrees, horizontal shear within
+-`max_shear`, horizontal stretch within `aspect_range`; never a mirror); downscaled only if it
would not fit; a random position; a colour whose luma contrasts with the pixels under it
(`scene_render.contrasting_colour`). Everything comes from one `numpy.random.Generator`, so an
image is a pure function of its generator's seed (and the installed fonts and FreeType).
"""
import functools
import os
import string

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from rethink_tf.data import scene_render

CLASS_NAMES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
NUM_CLASSES = len(CLASS_NAMES)
# Alphanumeric fonts shipped in matplotlib's `mpl-data/fonts/ttf`, in a fixed order (a font's
# index is part of the generation plan, so the order must not depend on the file system).
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmmi10.ttf", "cmss10.ttf", "cmtt10.ttf",
)
# Pixels between the glyph's tight box and the image border, at least.
_MARGIN = 1
_ALPHA_THRESHOLD = 0.5


def font_dir():
    """The directory of matplotlib's bundled TrueType fonts."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=1)
def load_fonts():
    """Returns the paths of the `FONT_FILES` present, in `FONT_FILES` order.

    Raises:
        FileNotFoundError: if none of them is installed.
    """
    directory = font_dir()
    paths = tuple(os.path.join(directory, name) for name in FONT_FILES
                  if os.path.exists(os.path.join(directory, name)))
    if not paths:
        raise FileNotFoundError(f"no font of FONT_FILES in {directory!r}; the glyph corpus "
                                "renders with the fonts that ship with matplotlib")
    return paths


def font_name(path):
    """The font's file name without extension, e.g. 'DejaVuSerif-BoldItalic'."""
    return os.path.splitext(os.path.basename(path))[0]


@functools.lru_cache(maxsize=512)
def _truetype(path, size):
    return ImageFont.truetype(path, size)


def glyph_alpha(char, font_path, font_size, stroke_width=0):
    """Renders one character as a tight float32 coverage map in [0, 1].

    Args:
        char: one character.
        font_path: a TrueType file.
        font_size: em size in pixels (> 0).
        stroke_width: pixels of outline added around every stroke (>= 0), in the same ink.

    Returns:
        float32 [h, w] alpha, cropped to the pixels it covers.

    Raises:
        ValueError: if `font_size` or `stroke_width` is out of range, or the font draws
            nothing for `char`.
    """
    if font_size < 1 or stroke_width < 0:
        raise ValueError(f"font_size must be >= 1 and stroke_width >= 0, got {font_size} and "
                         f"{stroke_width}")
    font = _truetype(font_path, int(font_size))
    side = 3 * int(font_size) + 4 * int(stroke_width) + 4
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), char, fill=255, font=font, anchor="mm",
                                stroke_width=int(stroke_width), stroke_fill=255)
    alpha = np.asarray(canvas, np.float32) / 255.0
    box = scene_render.tight_box(alpha > 0)
    if box is None:
        raise ValueError(f"font {font_name(font_path)!r} draws nothing for {char!r}")
    return alpha[box[0]:box[2], box[1]:box[3]]


def affine_alpha(alpha, rotation=0.0, shear=0.0, aspect=1.0):
    """Rotates, shears and stretches a coverage map about its centre (never mirrors).

    Args:
        alpha: float32 [h, w] in [0, 1].
        rotation: degrees, counter-clockwise.
        shear: horizontal shear (x moves by shear * y, y pointing down).
        aspect: horizontal stretch (> 0).

    Returns:
        float32 alpha cropped to the pixels it covers (bilinear resampling).
    """
    if aspect <= 0:
        raise ValueError(f"aspect must be > 0, got {aspect}")
    theta = np.deg2rad(rotation)
    cos, sin = np.cos(theta), np.sin(theta)
    # Forward map on (x, y) with y down: stretch, then shear, then rotate counter-clockwise.
    forward = np.array([[cos, sin], [-sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ \
        np.diag([aspect, 1.0])
    height, width = alpha.shape
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
    centre = np.array([width / 2.0, height / 2.0])
    moved = (corners - centre) @ forward.T
    out_w = int(np.ceil(np.ptp(moved[:, 0]))) + 2
    out_h = int(np.ceil(np.ptp(moved[:, 1]))) + 2
    inverse = np.linalg.inv(forward)
    out_centre = np.array([out_w / 2.0, out_h / 2.0])
    # PIL maps each output pixel (x, y) to input (a x + b y + c, d x + e y + f).
    offset = centre - inverse @ out_centre
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    image = Image.fromarray(alpha, mode="F").transform(
        (out_w, out_h), Image.AFFINE, data=data, resample=Image.BILINEAR)
    out = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    box = scene_render.tight_box(out > 0)
    if box is None:
        return alpha
    return out[box[0]:box[2], box[1]:box[3]]


def fit_alpha(alpha, max_side):
    """Downscales a coverage map (aspect kept) so that its longer side is <= `max_side`."""
    longer = max(alpha.shape)
    if longer <= max_side:
        return alpha
    scale = max_side / longer
    size = (max(1, int(alpha.shape[1] * scale)), max(1, int(alpha.shape[0] * scale)))
    resized = Image.fromarray(alpha, mode="F").resize(size, Image.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def render_glyph(rng, label, fonts, textures, image_size=64, font_size_range=(28, 52),
                 max_rotation=15.0, max_shear=0.25, aspect_range=(0.85, 1.15)):
    """Renders one glyph image (see the module docstring for the recipe).

    Args:
        rng: `numpy.random.Generator`; the image depends on nothing else.
        label: class id in [0, NUM_CLASSES).
        fonts: font file paths, e.g. `load_fonts()`.
        textures: background photos, e.g. `scene_render.load_textures()`.
        image_size: side of the square output.
        font_size_range: (min, max) inclusive em size in pixels.
        max_rotation: largest rotation in degrees, either way.
        max_shear: largest horizontal shear, either way.
        aspect_range: (min, max) horizontal stretch.

    Returns:
        (image uint8 [image_size, image_size, 3], font index into `fonts`).

    Raises:
        ValueError: on a label or range out of bounds.
    """
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
    low, high = int(font_size_range[0]), int(font_size_range[1])
    if not 1 <= low <= high:
        raise ValueError(f"font_size_range {font_size_range} must satisfy 1 <= min <= max")
    image = scene_render.random_background(rng, textures, image_size)
    font_index = int(rng.integers(len(fonts)))
    font_size = int(rng.integers(low, high + 1))
    stroke = int(rng.integers(0, max(1, round(font_size / 20)) + 1))
    alpha = glyph_alpha(CLASS_NAMES[label], fonts[font_index], font_size, stroke)
    alpha = affine_alpha(alpha, rotation=rng.uniform(-max_rotation, max_rotation),
                         shear=rng.uniform(-max_shear, max_shear),
                         aspect=rng.uniform(*aspect_range))
    alpha = fit_alpha(alpha, image_size - 2 * _MARGIN)
    alpha = alpha * np.float32(rng.uniform(0.9, 1.0))
    height, width = alpha.shape
    y = int(rng.integers(_MARGIN, image_size - height - _MARGIN + 1))
    x = int(rng.integers(_MARGIN, image_size - width - _MARGIN + 1))
    ink = alpha >= _ALPHA_THRESHOLD * alpha.max()
    luma = float((image[y:y + height, x:x + width][ink] @ scene_render.LUMA).mean())
    scene_render.paste(image, alpha, y, x, scene_render.contrasting_colour(rng, luma))
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8), font_index


def plan_labels(rng, count):
    """Class ids of a split: consecutive shuffled rounds of all `NUM_CLASSES` classes."""
    return scene_render.stratified_classes(rng, count, NUM_CLASSES)
