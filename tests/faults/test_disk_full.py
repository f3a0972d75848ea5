"""Writes that fail (disk full, a file-size limit) leave the previous state readable and say
what could not be written.

The failure is real: the writing process runs under a file-size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored), so the kernel fails the write with EFBIG exactly where a full disk fails it
with ENOSPC; no root, no special file system.
"""

import glob
import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from faults_helpers import REPO_ROOT  # tests/faults/  # pylint: disable=g-bad-import-order
from faults_helpers import run_command  # pylint: disable=g-bad-import-order


def _limited(max_bytes):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def _run_limited(args, max_bytes):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, preexec_fn=_limited(max_bytes),
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=False)


def test_a_json_write_that_fails_keeps_the_previous_file_and_names_it(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"AP": 0.5}')
    script = ("import sys; from rethink_tf.data import atomic; "
              "atomic.write_json(sys.argv[1], {'AP': 'x' * 100000}, 'metrics')")
    proc = _run_limited(["-c", script, str(path)], 4096)
    assert proc.returncode != 0
    assert "WriteError" in proc.stderr and f"could not write the metrics {str(path)!r}" in (
        proc.stderr), proc.stderr[-2000:]
    assert "File too large" in proc.stderr and "previous version is unchanged" in proc.stderr
    assert json.loads(path.read_text()) == {"AP": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left


def _train_command(data_dir, workdir, steps):
    return ["-m", "rethink_tf.train", "--config=experiments/configs/detection.py",
            f"--workdir={workdir}", "--config.dataset.name=digit_scenes/detection_tiny",
            f"--config.dataset.data_dir={data_dir}", "--config.dataset.image_size=64",
            "--config.model.backbone=resnet_tiny", "--config.model.fpn_filters=8",
            "--config.model.head_filters=8", "--config.model.head_depth=1",
            f"--config.train.steps={steps}", "--config.train.batch_size=4",
            "--config.train.warmup_steps=1", "--config.train.checkpoint_every=2",
            "--config.train.verbose=0", "--config.eval.num_images=8",
            "--config.eval.tb_images=0"]


@pytest.mark.slow  # the failed JSON write (above) stays in the default run; CI time
def test_a_checkpoint_that_cannot_be_written_fails_naming_it_and_the_run_resumes(
        tmp_path, digit_scenes_data_dir):
    workdir = str(tmp_path / "run")
    run_command(_train_command(digit_scenes_data_dir, workdir, 2))
    checkpoints = os.path.join(workdir, "checkpoints")
    size = os.path.getsize(glob.glob(os.path.join(checkpoints, "ckpt-2.data-*"))[0])
    # Continue to step 4 where no file may grow past half a checkpoint: ckpt-4 cannot be
    # written.
    proc = _run_limited(_train_command(digit_scenes_data_dir, workdir, 4), size // 2)
    assert proc.returncode != 0
    assert "could not write checkpoint ckpt-4" in proc.stderr, proc.stderr[-3000:]
    assert "File too large" in proc.stderr
    assert "the latest checkpoint is still" in proc.stderr and "ckpt-2'" in proc.stderr
    # Nothing half-written is left, and ckpt-2 is still the latest.
    assert not glob.glob(os.path.join(checkpoints, "ckpt-4*"))
    with open(os.path.join(checkpoints, "checkpoint")) as f:
        assert 'model_checkpoint_path: "ckpt-2"' in f.read()
    # With room again, the same command resumes from ckpt-2 and finishes.
    output = run_command(_train_command(digit_scenes_data_dir, workdir, 4))
    assert "Resuming from" in output and "ckpt-2 at step 2" in output, output[-2000:]
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["step"] == 4
