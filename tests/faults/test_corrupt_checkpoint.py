"""A damaged latest checkpoint is never picked up: resume skips it, naming it, and continues from
the one before; with `config.deterministic` it ends where an uninterrupted run does."""

import glob
import os
import shutil

import numpy as np
import pytest

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

import tensorflow as tf  # pylint: disable=g-bad-import-order

from rethink_tf.training import trainer


def _config(data_dir, steps):
    c = tiny_config("detection", data_dir, steps=steps)
    c.deterministic = True
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digit_scenes_data_dir):
    """{"four": a run stopped after 4 steps (ckpt-2, ckpt-4), "six": 6 steps uninterrupted}."""
    root = tmp_path_factory.mktemp("corrupt")
    trainer.train(_config(digit_scenes_data_dir, 4), str(root / "four"))
    trainer.train(_config(digit_scenes_data_dir, 6), str(root / "six"))
    return {"four": str(root / "four"), "six": str(root / "six")}


def _data_file(workdir, step):
    return glob.glob(os.path.join(workdir, "checkpoints", f"ckpt-{step}.data-*"))[0]


def _truncate(workdir):
    path = _data_file(workdir, 4)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def _flip_a_byte(workdir):
    path = _data_file(workdir, 4)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _garble_index(workdir):
    with open(os.path.join(workdir, "checkpoints", "ckpt-4.index"), "wb") as f:
        f.write(b"not an index")


def _remove_data(workdir):
    os.remove(_data_file(workdir, 4))


DAMAGE = {"truncated": _truncate, "bit_flip": _flip_a_byte, "garbled_index": _garble_index,
          "missing_data": _remove_data}


def _weights(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if "save_counter" not in n}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_skipped_and_the_run_ends_as_uninterrupted(
        damage, runs, tmp_path, digit_scenes_data_dir, capsys):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["four"], workdir)
    DAMAGE[damage](workdir)
    metrics = trainer.train(_config(digit_scenes_data_dir, 6), workdir)
    out = capsys.readouterr().out
    assert "skipping unreadable checkpoint" in out and "ckpt-4" in out, out
    assert "Resuming from" in out and "ckpt-2 at step 2" in out, out
    assert metrics["step"] == 6
    expected, got = _weights(runs["six"]), _weights(workdir)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_every_checkpoint_damaged_fails_naming_each(runs, tmp_path, digit_scenes_data_dir):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["four"], workdir)
    for step in (2, 4):
        os.remove(_data_file(workdir, step))
    with pytest.raises(ValueError, match=r"no checkpoint .* is readable.*ckpt-4.*ckpt-2"):
        trainer.train(_config(digit_scenes_data_dir, 6), workdir)
