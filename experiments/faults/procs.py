"""Running the package's commands as a user does, killing them with SIGKILL, and comparing
a finished training workdir with a reference's.

Shared by `experiments/faults/run.py` (random kills, many times) and `tests/faults/` (kills at
named points): `python <args>` from the repository root, on CPU, unbuffered.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def env():
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def train_command(data_dir, workdir, steps, eval_every=0, eval_images=8):
    """`python -m rethink_tf.train` args: a tiny deterministic detector (64 px, resnet_tiny,
    S4 and stochastic depth, so every random source is exercised), a checkpoint every 2
    steps and a line per step, on `digit_scenes/detection_tiny` in `data_dir`."""
    return [
        "-m", "rethink_tf.train", "--config=experiments/configs/detection.py",
        f"--workdir={workdir}", "--config.dataset.name=digit_scenes/detection_tiny",
        f"--config.dataset.data_dir={data_dir}", "--config.dataset.image_size=64",
        "--config.dataset.shuffle_buffer=16", "--config.model.backbone=resnet_tiny",
        "--config.model.fpn_filters=8", "--config.model.head_filters=8",
        "--config.model.head_depth=1", "--config.model.drop_path_rate=0.2",
        "--config.augment=s4", f"--config.train.steps={steps}", "--config.train.batch_size=4",
        "--config.train.warmup_steps=1", "--config.train.checkpoint_every=2",
        f"--config.train.eval_every={eval_every}", "--config.train.log_every=1",
        "--config.train.verbose=2", f"--config.eval.num_images={eval_images}",
        "--config.eval.batch_size=8", "--config.eval.tb_images=0",
        "--config.deterministic=True"]


def pretrain_command(data_dir, workdir, steps):
    """`python -m rethink_tf.pretrain` args: a tiny deterministic supervised pre-training on
    `digit_scenes/classification_tiny`, a checkpoint every 2 steps and a line per step."""
    return [
        "-m", "rethink_tf.pretrain", "--config=experiments/configs/pretrain_classification.py",
        f"--workdir={workdir}", "--config.dataset.name=digit_scenes/classification_tiny",
        f"--config.dataset.data_dir={data_dir}", "--config.dataset.image_size=32",
        "--config.dataset.shuffle_buffer=16", "--config.model.backbone=resnet_tiny",
        f"--config.train.steps={steps}", "--config.train.batch_size=8",
        "--config.train.warmup_steps=1", "--config.train.checkpoint_every=2",
        "--config.train.log_every=1", "--config.train.verbose=2",
        "--config.eval.num_images=16", "--config.eval.batch_size=16",
        "--config.deterministic=True"]


def run(args, timeout=1800):
    """Runs `python <args>`; returns (returncode, output) with stderr folded into stdout."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    return proc.returncode, proc.stdout


def kill_when(args, should_kill, timeout=1800, poll_s=0.01):
    """Starts `python <args>` and SIGKILLs it as soon as `should_kill(output_so_far, elapsed_s)`.

    Args:
      args: the arguments after `python`.
      should_kill: called every `poll_s` seconds with the output so far (a string) and the
        seconds since the start; True kills the process (SIGKILL: no handler, no cleanup).
      timeout: seconds before the process is killed as hung (an error).

    Returns:
        (killed, returncode, output, elapsed_s): `killed` is False when the command ended on
        its own first.
    """
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks = []  # raw chunks, not lines: progress bars rewrite one line with "\r"

    def read():
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            chunks.append(chunk.decode("utf-8", errors="replace"))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.time()
    killed = False
    try:
        while proc.poll() is None:
            elapsed = time.time() - start
            if should_kill("".join(chunks), elapsed):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            if elapsed > timeout:
                raise TimeoutError(f"python {' '.join(args)} ran past {timeout} s")
            time.sleep(poll_s)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait()
        reader.join(timeout=10)
    return killed, proc.returncode, "".join(chunks), time.time() - start


def line_trigger(text, delay_s=0.0):
    """A `should_kill` that fires `delay_s` seconds after a line holding `text` is printed."""
    seen = {}

    def should_kill(output, elapsed):
        if "at" not in seen and text in output:
            seen["at"] = elapsed
        return "at" in seen and elapsed >= seen["at"] + delay_s
    return should_kill


def last_line(output):
    """The last line of `output` that is not a TF/absl log line (where a kill landed)."""
    for line in reversed(output.replace("\r", "\n").splitlines()):
        line = line.strip()
        if line and not _LOG_LINE.match(line):
            return line[:160]
    return ""


_LOG_LINE = re.compile(r"^([IWEF]\d{4} |\d{4}-\d\d-\d\d |WARNING:|INFO:|E0000 |W0000 )")


def checkpoint_values(workdir):
    """{name: value} of every variable of a workdir's latest checkpoint (but the
    checkpoint's own save counter)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if "save_counter" not in n}


def metrics(workdir):
    """A workdir's metrics.json without the measured speed."""
    with open(os.path.join(workdir, "metrics.json")) as f:
        return {k: v for k, v in json.load(f).items() if k != "images_per_s"}


def training_differences(reference, workdir):
    """[] when the final checkpoint and metrics equal the reference's, else what differs."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    problems = []
    if metrics(workdir) != metrics(reference):
        problems.append("metrics differ")
    want, got = checkpoint_values(reference), checkpoint_values(workdir)
    if sorted(want) != sorted(got):
        problems.append("checkpoint variables differ")
    else:
        differ = [n for n in want if not np.array_equal(want[n], got[n])]
        if differ:
            problems.append(f"{len(differ)} of {len(want)} checkpoint values differ")
    return problems
