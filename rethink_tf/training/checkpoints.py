"""Checkpoints of a workdir: the last k every N steps, and the best by the eval metric.

  workdir/checkpoints/ckpt-<step>.*        model + optimizer (+ any extra state), last k kept
  workdir/checkpoints/best/ckpt-<step>.*   the best evaluation so far
  workdir/checkpoints/best/best.json       {"metric", "value", "step"}

Running the same command again restores the latest checkpoint (weights, optimizer state and
step) and training continues from there.
"""

import json
import os

import tensorflow as tf
from absl import logging

from rethink_tf.data import atomic


# What reading a damaged checkpoint raises: a bit-flipped data file fails its CRC
# (DataLossError), a garbled index or a missing data file is a bare OpError, a truncated data
# file an IndexError from TF's reader. (Another architecture is a ValueError from `restore`.)
UNREADABLE_CHECKPOINT_ERRORS = (tf.errors.OpError, IndexError)


class CheckpointManager:
    """Saves and restores model + optimizer state of one workdir.

    Args:
      workdir: the run's directory.
      keep: how many of the latest checkpoints to keep.
      **trackables: objects to checkpoint (`model=...`, `optimizer=...`).
    """

    def __init__(self, workdir, keep=3, **trackables):
        self.directory = os.path.join(workdir, "checkpoints")
        self.best_directory = os.path.join(self.directory, "best")
        self.checkpoint = tf.train.Checkpoint(**trackables)
        model = trackables.get("model")
        if model is not None:
            assert_all_tracked(self.checkpoint, model)
        self._latest = tf.train.CheckpointManager(self.checkpoint, self.directory,
                                                  max_to_keep=keep, checkpoint_name="ckpt")
        self._best = tf.train.CheckpointManager(self.checkpoint, self.best_directory,
                                                max_to_keep=1, checkpoint_name="ckpt")

    @property
    def latest_checkpoint(self):
        return self._latest.latest_checkpoint

    @property
    def best_checkpoint(self):
        return self._best.latest_checkpoint

    def restore_latest(self):
        """Restores the latest readable checkpoint if there is one; returns its path or None.

        A checkpoint whose files are corrupt, truncated or missing (a disk error, a copy cut
        short) is never picked up: it is skipped with a warning naming it and the one before it
        is restored (its files are left where they are; training overwrites them when it
        reaches that step again). A checkpoint of another architecture is not corruption:
        `restore` raises for it.

        Raises:
          ValueError: no checkpoint of the workdir is readable, or one is of another
            architecture.
        """
        paths = list(reversed(self._latest.checkpoints))
        failures = []
        for path in paths:
            try:
                self.restore(path)
            except UNREADABLE_CHECKPOINT_ERRORS as e:
                failures.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                logging.warning("checkpoint %s is unreadable; trying the one before it (%s)",
                                path, failures[-1])
                print(f"WARNING: skipping unreadable checkpoint {failures[-1]}", flush=True)
                continue
            return path
        if failures:
            raise ValueError(f"no checkpoint under {self.directory!r} is readable: "
                             + "; ".join(failures))
        return None

    def restore(self, path):
        """Restores a given checkpoint (e.g. the best) for evaluation or export.

        Raises:
          ValueError: if the checkpoint lacks a value for some variable of the objects being
            restored (another architecture, or written before `models.tracking` saved every
            variable): evaluating such a partly restored model would be silently wrong.
        """
        try:
            status = self.checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
            raise ValueError(
                f"checkpoint {path!r} does not hold every variable of this model, or holds "
                f"them with other shapes (written for another architecture or config, or by "
                f"a version that did not save them all): {str(e)[:500]}") from e
        status.expect_partial()
        return path

    def save(self, step):
        """Saves a checkpoint numbered `step`; keeps the last k.

        Raises:
          atomic.WriteError: the checkpoint could not be written (disk full, file-size limit,
            read-only folder); its partial files are removed and the latest checkpoint is
            still the one before, so running the same command again resumes from there.
        """
        return _writing(lambda: self._latest.save(checkpoint_number=int(step)),
                        self.directory, step, self._latest.latest_checkpoint)

    def best(self):
        """The best evaluation so far: {"metric", "value", "step"} or None."""
        path = os.path.join(self.best_directory, "best.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def maybe_save_best(self, step, metric, value, higher_is_better=True):
        """Saves a best checkpoint if `value` beats the best so far; returns True if it did."""
        best = self.best()
        if best is not None and best["metric"] == metric:
            better = value > best["value"] if higher_is_better else value < best["value"]
            if not better:
                return False
        _writing(lambda: self._best.save(checkpoint_number=int(step)), self.best_directory,
                 step, self._best.latest_checkpoint)
        atomic.write_json(os.path.join(self.best_directory, "best.json"),
                          {"metric": metric, "value": float(value), "step": int(step)},
                          "best-checkpoint record")
        return True


def _writing(save, directory, step, previous):
    """Runs `save()`; a failed write becomes an `atomic.WriteError` naming what is kept."""
    try:
        return save()
    except (OSError, tf.errors.OpError) as e:
        for partial in tf.io.gfile.glob(os.path.join(directory, f"ckpt-{int(step)}_temp*")):
            tf.io.gfile.rmtree(partial)
        kept = (f"the latest checkpoint is still {previous!r}" if previous
                else "no checkpoint was written")
        message = str(getattr(e, "message", "") or e).splitlines()[0][:300]
        raise atomic.WriteError(
            f"could not write checkpoint ckpt-{int(step)} under {directory!r}: {message}; "
            f"{kept}") from e


def assert_all_tracked(checkpoint, model):
    """Raises if a checkpoint of `checkpoint` would not save some variable of `model`.

    Such a variable (a sub-layer's, held where TF's object graph does not look) would be left at
    its initial value by every restore: resume, evaluation, export and pseudo-labeling would
    silently use a different model than the one trained. `models.tracking` fixes the known
    cases; this check catches new ones before anything is written.
    """
    from rethink_tf.models import tracking  # pylint: disable=g-import-not-at-top
    missing = tracking.untracked_variables(checkpoint, model.variables)
    if missing:
        names = ", ".join(v.path for v in missing[:5])
        raise ValueError(
            f"model {model.name!r}: {len(missing)} variable(s) would not be saved in checkpoints "
            f"({names}{', ...' if len(missing) > 5 else ''}); call "
            "`rethink_tf.models.tracking.track_sublayer_lists(model)` after building it")


def find_checkpoint(workdir, which="best"):
    """The checkpoint of a training workdir that `which` names.

    Args:
      workdir: a training workdir.
      which: "best" (falls back to the latest, with a warning, when the run has no best
        checkpoint), "latest", or a checkpoint path (`.../ckpt-<step>`).

    Returns:
      The checkpoint path (prefix).

    Raises:
      FileNotFoundError: the workdir has no checkpoint, or `which` is neither "best",
        "latest" nor an existing checkpoint.
    """
    directory = os.path.join(workdir, "checkpoints")
    if which == "best":
        path = tf.train.latest_checkpoint(os.path.join(directory, "best"))
        if path is not None:
            return path
        logging.warning("%s has no best checkpoint; using the latest", workdir)
        which = "latest"
    if which == "latest":
        path = tf.train.latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"{workdir!r} has no checkpoint under {directory!r}: "
                                    "train it first")
        return path
    if not tf.io.gfile.exists(which + ".index"):
        raise FileNotFoundError(f"checkpoint={which!r} is neither 'best', 'latest' nor an "
                                "existing checkpoint path (no .index file)")
    return which


def read_model(model, path):
    """Restores only the model from the checkpoint at `path`, strictly.

    Every variable of `model` must get a value (same architecture); the checkpoint's other
    objects (optimiser state and step, a student's loss-normaliser state) are left out, so
    the model starts a new run, or is evaluated, exported or used as a teacher, with the
    weights alone. Restoring the model alone is complete because `models.tracking` puts every
    model variable in the checkpoint graph (`assert_all_tracked` checks it).

    Returns:
      `path`.

    Raises:
      ValueError: the checkpoint does not hold every variable of `model`.
    """
    checkpoint = tf.train.Checkpoint(model=model)
    assert_all_tracked(checkpoint, model)
    # A compiled Keras model tracks its optimizer: the restore below would also load the
    # other run's optimizer (its step and momenta), and a student would start at the
    # teacher's last step, i.e. not train. Its values are put back afterwards.
    optimizer = getattr(model, "optimizer", None)
    kept = [(v, v.numpy()) for v in optimizer.variables] if optimizer is not None else []
    try:
        status = checkpoint.read(path)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(
            f"checkpoint {path!r} does not hold every variable of this model, or holds them "
            f"with other shapes (another architecture?): {str(e)[:500]}") from e
    status.expect_partial()
    for variable, value in kept:
        variable.assign(value)
    return path


def restore_model(model, workdir, which="best"):
    """Restores only the model of a training workdir's checkpoint, strictly (`read_model`).

    Args:
      model: the model to fill.
      workdir: a training workdir.
      which: "best" (else latest), "latest" or a checkpoint path (`find_checkpoint`).

    Returns:
      The checkpoint path.

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: the checkpoint does not hold every variable of `model`.
    """
    return read_model(model, find_checkpoint(workdir, which))


def step_of(path):
    """The step number of a checkpoint path `.../ckpt-<step>`."""
    return int(os.path.basename(path).rsplit("-", 1)[1])
