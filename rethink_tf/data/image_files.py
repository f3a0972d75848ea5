"""Image files as the canonical `image` (RGB uint8 [H, W, 3]), decoded with PIL.

Shared by the `images:` and `coco_json:` sources: grayscale, palette, RGBA, CMYK and 16-bit
images become RGB uint8, and EXIF orientation is applied. A file that is not an image, is
truncated, empty or corrupt, or whose header claims more than `PIL.Image.MAX_IMAGE_PIXELS`
pixels (a decompression bomb, or a scan far beyond what a detector resizes to) raises; the
sources skip and count such files.
"""
from __future__ import annotations

import numpy as np


def decode_image(path: str) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3].

    Args:
        path: the file.

    Returns:
        The image.

    Raises:
        ValueError: the header claims more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (checked
            before any pixel is decoded), or the image decodes to an unusable shape.
        Exception: whatever PIL raises for an unreadable file.
    """
    from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
    with Image.open(path) as img:
        check_pixel_count(img.size, Image.MAX_IMAGE_PIXELS)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I") or img.mode == "F":
            # Wide grayscale: scale to 8 bits by the bit depth instead of clipping.
            gray = np.asarray(img).astype(np.float64)
            if img.mode == "F" and gray.max(initial=0.0) <= 1.0:
                gray = gray * 255.0
            elif img.mode.startswith("I;16") or gray.max(initial=0.0) > 255.0:
                gray = gray / 257.0
            gray = np.clip(np.round(gray), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"decoded to an unusable shape {rgb.shape}")
    return rgb


def check_pixel_count(size, limit) -> None:
    """Raises ValueError if an image of `size` (width, height) has more than `limit` pixels.

    PIL only warns above its limit and refuses at twice it; this refuses at the limit, from
    the header, before any pixel is decoded (decoded, such an image takes >= 256 MiB as RGB).

    Args:
        size: (width, height) from the image header.
        limit: the most pixels allowed; None or 0 = no limit.
    """
    width, height = (int(v) for v in size)
    if limit and width * height > limit:
        raise ValueError(f"{width}x{height} = {width * height} pixels is more than the limit of "
                         f"{limit} (PIL.Image.MAX_IMAGE_PIXELS; raise it to read such images)")
