"""Helpers shared by the fault tests and their fixtures (a helper module, not a test module)."""

import hashlib
import os

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

UNLABELED = "digit_scenes/detection_tiny"


def detection_config(data_dir):
    """The config of `trained_workdir`: `tiny_config('detection')`, one step, evaluated on 4."""
    c = tiny_config("detection", data_dir, steps=1)
    c.train.checkpoint_every = 1
    c.eval.num_images = 4
    c.eval.tb_images = 1
    return c


def snapshot(directory):
    """{relative path: sha256 of its bytes, or '<dir>'} of everything under `directory`.

    Empty folders count too: a rejected run must not even create one.
    """
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory)] = "<dir>"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out
