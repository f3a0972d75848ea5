"""`images:<glob>`: a folder of unlabeled images as canonical examples.

Each example is `{'image': uint8 [H, W, 3], 'source_id': <path relative to the glob's
fixed root>}` (forward slashes, so ids match across operating systems). The glob is
expanded with `recursive=True`, so `**` matches nested folders. Images are decoded in
Python with PIL: grayscale, palette, RGBA, CMYK and 16-bit images become RGB uint8, and
EXIF orientation is applied. A file that cannot be decoded is skipped, never fatal; a
`SkipCounter` passed to `load` records it so the pseudo-labeler can report
"skipped N unreadable files" (`count_unreadable(glob)` counts without a dataset).
"""
from __future__ import annotations

import glob as glob_lib
import logging
import os
import threading

import numpy as np
import tensorflow as tf

from rethink_tf.data import example as ex
from rethink_tf.data import subsets
from rethink_tf.data.image_files import decode_image

_MAGIC = ("*", "?", "[")


class SkipCounter:
    """Records the unreadable files skipped while iterating an `images:` dataset.

    Thread-safe (tf.data decodes in parallel). Counts each path once, however many
    epochs re-read it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._paths: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        """Records that `path` could not be decoded, and why."""
        with self._lock:
            if path not in self._paths:
                self._paths[path] = reason
                logging.warning("skipping unreadable image %s: %s", path, reason)

    @property
    def count(self) -> int:
        """The number of distinct unreadable files seen so far."""
        with self._lock:
            return len(self._paths)

    @property
    def paths(self) -> dict[str, str]:
        """A copy of {unreadable path: reason}."""
        with self._lock:
            return dict(self._paths)

    def __repr__(self) -> str:
        return f"SkipCounter(count={self.count})"


def list_images(pattern: str) -> tuple[list[str], str]:
    """Expands `pattern` to the sorted files it matches.

    Args:
        pattern: a glob, `**` allowed.

    Returns:
        (sorted file paths, the root directory that source ids are relative to).

    Raises:
        FileNotFoundError: the glob matches no file.
    """
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
        # A bare directory means every file under it.
        expanded = os.path.join(expanded, "**", "*")
    paths = sorted(p for p in glob_lib.glob(expanded, recursive=True) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(f"images:{pattern}: the glob matches no files "
                                f"(expanded to {expanded!r})")
    return paths, _glob_root(expanded)


def count_unreadable(pattern: str) -> int:
    """Decodes every file the glob matches and returns how many fail.

    Args:
        pattern: as for `images:<glob>`.

    Returns:
        The number of files that cannot be decoded.
    """
    counter = SkipCounter()
    for path in list_images(pattern)[0]:
        _try_decode(path, counter)
    return counter.count


def load(pattern: str, *, skip_counter: SkipCounter | None = None,
         fraction: float | None = None, shuffle: bool = False,
         seed: int | None = None) -> tf.data.Dataset:
    """Loads the images a glob matches; see the module docstring.

    Args:
        pattern: a glob, `**` allowed.
        skip_counter: records the unreadable files skipped; a new one if None.
        fraction: keep the `subsets.in_fraction` subset of the files.
        shuffle: shuffle the file order (reshuffled each epoch).
        seed: the shuffle seed.

    Returns:
        A dataset of {'image', 'source_id'}.
    """
    paths, root = list_images(pattern)
    ids = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    if fraction is not None and fraction < 1.0:
        keep = subsets.in_fraction(tf.constant(ids), fraction).numpy()
        paths = [p for p, k in zip(paths, keep) if k]
        ids = [i for i, k in zip(ids, keep) if k]
    counter = skip_counter if skip_counter is not None else SkipCounter()

    def read(path):
        image = _try_decode(path.decode("utf-8"), counter)
        if image is None:
            return np.zeros((1, 1, 3), np.uint8), False
        return image, True

    def decode(path, source_id):
        # stateful: the counter is a side effect tf.data must not optimize away.
        image, ok = tf.numpy_function(read, [path], [tf.uint8, tf.bool], stateful=True)
        image = tf.ensure_shape(image, [None, None, 3])
        return {ex.IMAGE: image, ex.SOURCE_ID: source_id}, tf.reshape(ok, [])

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(ids, tf.string)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return keep_readable(ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE))


def keep_readable(decoded):
    """(example, ok) pairs -> the examples whose image decoded (the others were counted)."""
    return decoded.filter(_is_readable).map(_drop_readable_flag)


def _is_readable(example, ok):
    # Named, not lambdas: AutoGraph cannot parse two lambdas on one line and warns users.
    del example
    return ok


def _drop_readable_flag(example, ok):
    del ok
    return example


def _try_decode(path: str, counter: SkipCounter):
    try:
        return decode_image(path)
    except Exception as err:  # pylint: disable=broad-except
        # Any decode failure (truncated, not an image, unsupported mode) means skip.
        counter.add(path, f"{type(err).__name__}: {err}")
        return None


def _glob_root(pattern: str) -> str:
    parts = pattern.replace("\\", "/").split("/")
    fixed = []
    for part in parts[:-1]:
        if any(m in part for m in _MAGIC):
            break
        fixed.append(part)
    root = "/".join(fixed)
    if not fixed:
        return "."
    return root if root else "/"
