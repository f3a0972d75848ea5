"""Image files as the canonical `image` (RGB uint8 [H, W, 3]), decoded with PIL.

Shared by the `images:` and `coco_json:` sources: grayscale, palette, RGBA, CMYK and 16-bit
images become RGB uint8, and EXIF orientation is applied.
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
        Exception: whatever PIL raises for an unreadable file.
    """
    from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
    with Image.open(path) as img:
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
