"""Keras callbacks of a training run: TensorBoard scalars, checkpoints, evaluation, stop."""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from rethink_tf.data import atomic
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training.history import HISTORY_FILE
from rethink_tf.training.history import read_metrics_history


def _step(model):
    return int(model.optimizer.iterations.numpy())


def console_mode(verbose, stream=None):
    """(Keras `verbose`, print_lines) for `config.train.verbose`.

    0: silent. 1: Keras's live progress bar on a terminal; on anything else (a log file, a
    pipe) one line per logging interval with the global step, the total, images/s and ETA,
    since a bar writes one ever-growing line of carriage returns there. 2: always lines.
    """
    import sys  # pylint: disable=g-import-not-at-top
    stream = stream or sys.stdout
    if verbose == 0:
        return 0, False
    if verbose == 1 and getattr(stream, "isatty", lambda: False)():
        return 1, False
    return 0, True


class TrainSummaries(keras.callbacks.Callback):
    """Every `every` steps: each loss term, the learning rate and images/s to TensorBoard.

    Also prints one line per interval (with ETA) when `print_lines` is set, for logs that are
    not a terminal.
    """

    def __init__(self, writer, every, global_batch_size, total_steps, print_lines=False):
        super().__init__()
        self.writer = writer
        self.every = max(int(every), 1)
        self.global_batch_size = global_batch_size
        self.total_steps = total_steps
        self.print_lines = print_lines
        self._last_time = None
        self._last_step = None
        self.last_images_per_s = None

    def on_train_begin(self, logs=None):
        self._last_time, self._last_step = time.time(), _step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every:
            return
        now = time.time()
        steps = step - self._last_step
        images_per_s = steps * self.global_batch_size / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        self.last_images_per_s = images_per_s
        lr = optimizer_lib.current_learning_rate(self.model.optimizer)
        scalars = {f"loss/{k}" if k != "loss" else "loss/total": float(v)
                   for k, v in (logs or {}).items() if np.ndim(v) == 0}
        scalars.update({"learning_rate": lr, "throughput/images_per_s": images_per_s})
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        self.writer.flush()
        if self.print_lines:
            eta = (self.total_steps - step) * self.global_batch_size / max(images_per_s, 1e-9)
            terms = " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in scalars.items()
                             if k.startswith("loss/"))
            print(f"step {step}/{self.total_steps} {terms} lr={lr:.4g} "
                  f"{images_per_s:.1f} img/s ETA {eta / 60:.1f} min", flush=True)


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss term (the run diverged)."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops a diverging run at the first step whose loss terms are not finite, and before a
    checkpoint of non-finite weights (batch-norm statistics overflow a step before the loss).

    It raises out of `fit` (at a step's end, or at an epoch's end before `PeriodicCheckpoint`,
    which it precedes): no checkpoint is written after the divergence, so the latest keeps the
    last finite weights and no NaN weights reach the disk. The loss terms in `logs` are the
    epoch's running means, so the first non-finite value names the step that diverged.

    With `skip=True` (`train.nonfinite="skip"`; the optimizer skips such updates, see
    `optimizer.SGDL2`), each skipped step is reported (step, and the count so far) and the run
    goes on; `max_consecutive` skipped steps in a row (a diverged run, not a bad batch) and
    non-finite weights (batch-norm statistics are updated by the forward pass, which the skip
    does not undo) still stop it. The epoch's running-mean losses in the logs and TensorBoard
    then read NaN until the epoch ends.
    """

    def __init__(self, manager=None, skip=False, max_consecutive=20):
        super().__init__()
        self.manager = manager
        self.skip = skip
        self.max_consecutive = int(max_consecutive)
        self._skipped = 0
        self._in_a_row = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.skip:
            self._count_skips()
            return
        bad = [f"{k} = {float(v)}" for k, v in (logs or {}).items()
               if np.ndim(v) == 0 and not np.isfinite(float(v))]
        if bad:
            self._stop(", ".join(bad))

    def _count_skips(self):
        skipped = getattr(self.model.optimizer, "skipped_steps", 0)
        if skipped > self._skipped:
            self._in_a_row += skipped - self._skipped
            self._skipped = skipped
            print(f"step {_step(self.model)}: non-finite gradient, update skipped "
                  f"(train.nonfinite=skip; {skipped} skipped in this run)", flush=True)
            if self._in_a_row >= self.max_consecutive:
                self._stop(f"{self._in_a_row} steps in a row had non-finite gradients and were "
                           "skipped")
        else:
            self._in_a_row = 0

    def on_epoch_end(self, epoch, logs=None):
        bad = [v.path for v in self.model.weights
               if v.dtype in ("float16", "float32", "float64")
               and not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            self._stop(f"non-finite weights in {', '.join(bad[:3])}{more}")

    def _stop(self, what):
        latest = self.manager.latest_checkpoint if self.manager is not None else None
        kept = (f"the latest checkpoint, {latest}, keeps the last finite weights"
                if latest else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"training diverged at step {_step(self.model)}: {what}. Nothing was saved after "
            f"it; {kept}. Lower train.learning_rate, lengthen train.warmup_steps or set "
            "train.clipnorm, then re-run the same command: it resumes from that checkpoint.")


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint at every epoch end (an epoch is `checkpoint_every` steps)."""

    def __init__(self, manager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(_step(self.model))


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the optimiser has taken `total_steps` steps."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) >= self.total_steps:
            self.model.stop_training = True


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates every `every` steps (at epoch ends) and at the last step.

    `evaluate_fn(step)` does the work (metrics, metrics.json, TensorBoard, best checkpoint).
    """

    def __init__(self, evaluate_fn, every, total_steps):
        super().__init__()
        self.evaluate_fn = evaluate_fn
        self.every = every
        self.total_steps = total_steps
        self._done_at = None

    def on_epoch_end(self, epoch, logs=None):
        step = _step(self.model)
        due = step >= self.total_steps or (self.every and step % self.every == 0)
        if due and step != self._done_at:
            self.evaluate_fn(step)
            self._done_at = step


def write_metrics(workdir, step, metrics, split):
    """Writes `workdir/metrics.json` (latest) and adds the record to `metrics_history.jsonl`.

    Both files are replaced atomically (a kill leaves the previous versions). The history
    keeps one record per (step, split): an evaluation repeated at the same step (a run resumed
    from an older checkpoint, `evaluate` on a finished workdir) replaces the earlier one.
    """
    record = {"step": int(step), "split": split}
    record.update({k: v for k, v in metrics.items()})
    history = [r for r in read_metrics_history(workdir)
               if (r.get("step"), r.get("split")) != (record["step"], split)]
    history.append(record)
    history.sort(key=lambda r: int(r.get("step", 0)))
    atomic.write_text(os.path.join(workdir, HISTORY_FILE),
                      "".join(json.dumps(r, default=float) + "\n" for r in history),
                      "metrics history")
    atomic.write_json(os.path.join(workdir, "metrics.json"), record, "metrics", indent=2,
                      default=float)
    return record


def write_eval_summaries(writer, step, metrics, images=None):
    """Scalar metrics (and drawn prediction images, uint8 [N, H, W, 3]) to TensorBoard."""
    with writer.as_default(step=int(step)):
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(f"eval/{name}", value)
            elif isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, (int, float)) and v >= 0:
                        tf.summary.scalar(f"eval_{name}/{sub}", v)
        if images is not None and len(images):
            tf.summary.image("eval/predictions", np.stack(images), max_outputs=len(images))
    writer.flush()
