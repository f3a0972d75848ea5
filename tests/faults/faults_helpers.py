"""Helpers shared by the fault tests and their fixtures (a helper module, not a test module)."""

import hashlib
import os
import sys

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



sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "faults"))
import procs  # noqa: E402  experiments/faults/procs.py  pylint: disable=wrong-import-position

REPO_ROOT = procs.REPO_ROOT


def run_command(args, timeout=600):
    """Runs `python <args>` from the repository root; returns its output; fails on rc != 0."""
    returncode, output = procs.run(args, timeout=timeout)
    assert returncode == 0, output[-4000:]
    return output


def kill_at(args, trigger, delay=0.0, timeout=600):
    """Starts `python <args>`, SIGKILLs it `delay` s after a line holding `trigger` appears.

    Returns:
        The output up to the kill.
    Raises:
        AssertionError: if the command ended before the trigger (nothing was killed).
    """
    killed, returncode, output, _ = procs.kill_when(
        args, procs.line_trigger(trigger, delay), timeout=timeout)
    assert killed, f"the command ended (rc {returncode}) before {trigger!r}:\n{output[-4000:]}"
    return output


def killed_then_rerun(args, trigger, delay=0.0):
    """`kill_at`, then the same command again to the end; returns the rerun's output."""
    kill_at(args, trigger, delay)
    return run_command(args)
