"""The one training loop, `train(config, workdir, hooks=...)`, and supervised training.

Every kind of training runs through `train`: supervised detection, segmentation and
classification (no hooks), supervised pre-training (a hook that saves the backbone), SimCLR
(its model, data and linear-probe evaluation as hooks), the noisy student and joint training
(their models and named-stream data as hooks). The loop owns what they share: seeding and
determinism, the mixed-precision policy, the strategy scope, the optimiser, restore-or-
initialise, checkpoints (last k + best), resume at the restored step, TensorBoard, the console,
periodic and final evaluation and metrics.json.

The workdir holds config.json, checkpoints/ (last k + best), tb/ (TensorBoard) and
metrics.json. Running the same command again resumes from the latest checkpoint at its step,
with the optimiser state; a finished run only re-evaluates if its metrics are missing.
"""

import dataclasses
import os
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from rethink_tf.data import atomic
from rethink_tf.data import pipelines
from rethink_tf.data import show
from rethink_tf.evaluation import evaluator
from rethink_tf.training import callbacks as callbacks_lib
from rethink_tf.training import checkpoints
from rethink_tf.training import config as config_lib
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import strategy as strategy_lib
from rethink_tf.training import tasks


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a kind of training changes in the one loop (None: the supervised default).

    Attributes:
      validate: `fn(config)`, raising ValueError naming a bad field, before any work
        (default `config.validate`).
      build_model: `fn(config) -> model`, called under the strategy's scope (default: the
        task model of `config`, `tasks.build_model`).
      compile_model: `fn(model, config, optimizer)` (default `tasks.compile_model`).
      train_data: `fn(config, info, per_replica_batch, input_context, start_step) -> dataset`
        (default `tasks.train_dataset`); batches from `start_step` on, so a resumed run sees
        the batches an uninterrupted one would.
      evaluate: `fn(run, split) -> (metrics, kept_examples)` (default: the task's evaluation,
        COCO AP / mIoU / top-1); the loop records the metrics (metrics.json, TensorBoard, the
        best checkpoint by `primary_metric`).
      primary_metric: the metric the best checkpoint is chosen by (default: the task's).
      after_training: `fn(run) -> dict` run on the chief and others once training is done
        (also on a re-run of a finished run), its dict merged into the returned metrics
        (pre-training writes the backbone's weights here).
    """
    validate: Optional[Callable[..., Any]] = None
    build_model: Optional[Callable[..., Any]] = None
    compile_model: Optional[Callable[..., Any]] = None
    train_data: Optional[Callable[..., Any]] = None
    evaluate: Optional[Callable[..., Any]] = None
    primary_metric: Optional[str] = None
    after_training: Optional[Callable[..., Any]] = None


def _default_build(config):
    return tasks.build_model(config, tasks.num_classes(config))


class Run:
    """Everything a run holds: strategy, model, optimiser, checkpoints and data info."""

    def __init__(self, config, workdir, hooks=None):
        hooks = hooks or Hooks()
        self.config = config
        self.workdir = workdir
        self.hooks = hooks
        self.strategy = strategy_lib.make_strategy(config.strategy, config.get("tpu", ""))
        self.info = tasks.dataset_info(config)
        self.num_classes = tasks.num_classes(config, self.info)
        self.class_names = tasks.class_names(config, self.info)
        with self.strategy.scope():
            self.model = (hooks.build_model or _default_build)(config)
            self.optimizer = optimizer_lib.build_optimizer(config.train)
            (hooks.compile_model or tasks.compile_model)(self.model, config, self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
        strategy_lib.adapt_model(self.model, self.strategy)
        # A student's loss-normaliser state is saved beside the model, not in it.
        extras = (self.model.checkpoint_extras()
                  if hasattr(self.model, "checkpoint_extras") else {})
        self.checkpoints = checkpoints.CheckpointManager(
            workdir, keep=config.train.keep_checkpoints, model=self.model,
            optimizer=self.optimizer, **extras)
        self.chief = strategy_lib.is_chief()

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    @property
    def primary_metric(self):
        return self.hooks.primary_metric or evaluator.PRIMARY_METRIC[self.config.task]


def _setup(config):
    # Fresh Keras global state (layer-name counters above all): a run's graph, hence its
    # float summation order, then does not depend on what ran before it in the process.
    keras.backend.clear_session()
    keras.utils.set_random_seed(int(config.seed))
    set_op_determinism(bool(config.get("deterministic", False)))
    policy = "mixed_float16" if config.train.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)


def set_op_determinism(enabled):
    """Turns TF op determinism on or off (process-wide, so set by every run: a deterministic
    run must not leave the next one slower). TF's public API only turns it on; off goes
    through the function that public call wraps (an upgrade risk, listed in BUILD.md)."""
    from tensorflow.python.framework import config as tf_config  # pylint: disable=g-import-not-at-top
    if enabled:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


def train(config, workdir, extra_callbacks=(), hooks=None):
    """Trains as `config` says, in `workdir`; resumes if it holds a checkpoint.

    Args:
      config: an experiment config (see `rethink_tf.training.config.base_config`).
      workdir: the run's directory.
      extra_callbacks: more Keras callbacks (tests use one to interrupt a run).
      hooks: a `Hooks` for a kind of training other than supervised (student, joint,
        SimCLR, pre-training).

    Returns:
      The final metrics dict (as written to `workdir/metrics.json`), plus what
      `hooks.after_training` returned.
    """
    hooks = hooks or Hooks()
    (hooks.validate or config_lib.validate)(config)
    if hooks.build_model is None:
        if config.self_training.get("student", False):
            raise ValueError("config.self_training.student: a student config trains through "
                             "`rethink_tf.training.student.train_student` (or `python -m "
                             "rethink_tf.train`), not `trainer.train` alone")
        if config_lib.is_joint(config):
            raise ValueError("config.joint.dataset: a joint config trains through "
                             "`rethink_tf.training.joint.train_joint` (or `python -m "
                             "rethink_tf.train`), not `trainer.train` alone")
    _check_same_architecture(config, workdir)
    _setup(config)
    run = Run(config, workdir, hooks)
    # Restore (or initialise) before writing anything: a run rejected here (a checkpoint of
    # another architecture, missing init weights) leaves an existing workdir as it was.
    restored = run.checkpoints.restore_latest()
    if restored:
        logging.info("resumed from %s at step %d", restored, run.step)
        print(f"Resuming from {restored} at step {run.step}", flush=True)
    else:
        loaded = tasks.initialize(run.model, config)
        if loaded:
            print(f"Initialised from {loaded}", flush=True)
    if run.chief:
        config_lib.save(config, workdir)

    total = int(config.train.steps)
    # Only the chief writes TensorBoard events (the workdir may be shared by the workers).
    tb_train, tb_eval = (
        (tf.summary.create_file_writer(os.path.join(workdir, "tb", name)) if run.chief
         else tf.summary.create_noop_writer()) for name in ("train", "eval"))
    evaluate = hooks.evaluate or _task_evaluation(config, run)

    evaluated = {}

    def evaluate_fn(step):
        evaluated[step] = _evaluate_and_record(run, evaluate, tb_eval, step)
        return evaluated[step]

    if run.step < total:
        data_fn = hooks.train_data or tasks.train_dataset
        start = run.step
        # From the restored step on: a resumed run sees the batches an uninterrupted one would.
        dataset = pipelines.distribute(
            run.strategy, lambda bs, ctx: data_fn(config, run.info, bs, ctx, start_step=start),
            int(config.train.batch_size))
        every = int(config.train.checkpoint_every)
        summaries = callbacks_lib.TrainSummaries(
            tb_train, config.train.log_every, config.train.batch_size, total,
            print_lines=callbacks_lib.console_mode(config.train.verbose)[1])
        # First: a non-finite step raises before anything else sees it (TensorBoard, saves).
        cbs = [callbacks_lib.StopOnNonFinite(
                   run.checkpoints, skip=config.train.get("nonfinite", "stop") == "skip"),
               summaries,
               callbacks_lib.StopAtStep(total),
               callbacks_lib.PeriodicEvaluation(evaluate_fn, config.train.eval_every, total),
               *extra_callbacks]
        if run.chief:
            cbs.insert(2, callbacks_lib.PeriodicCheckpoint(run.checkpoints))
        run.model.fit(dataset, steps_per_epoch=every, epochs=-(-total // every),
                      initial_epoch=run.step // every, callbacks=cbs,
                      verbose=callbacks_lib.console_mode(config.train.verbose)[0])
        if run.chief and (run.checkpoints.latest_checkpoint is None
                          or checkpoints.step_of(run.checkpoints.latest_checkpoint) != run.step):
            run.checkpoints.save(run.step)
    extra = hooks.after_training(run) if hooks.after_training else {}
    if not run.chief:
        # Another worker: metrics.json is the chief's to write (and on a shared workdir it
        # may be mid-write now): return this worker's own evaluation.
        own = evaluated.get(run.step) or evaluate_fn(run.step)
        return {**own, **(extra or {})}
    metrics_path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(metrics_path) or _recorded_step(metrics_path) != run.step:
        evaluate_fn(run.step)
    return {**_read_json(metrics_path), **(extra or {})}


def _check_same_architecture(config, workdir):
    """A workdir resumes only with the architecture its checkpoints hold (fails before work)."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return
    config_lib.require_same_architecture(
        config, workdir, "its checkpoints are for that; use a new --workdir (or the same "
                         "config) to resume")


def _recorded_step(path):
    return _read_json(path).get("step")


def _read_json(path):
    import json  # pylint: disable=g-import-not-at-top
    with open(path) as f:
        return json.load(f)


def evaluation_inputs(config, info, split):
    """What `evaluator.evaluate` needs beyond the batches, for the official numbers.

    Detection on COCO (`coco/*`, `coco_json:`) is scored against the dataset's own annotation
    JSON (crowds, annotation areas, every box); other detection and segmentation sources
    against their canonical examples at original resolution (every box; masks at the
    original size, the VOC protocol).
    """
    kwargs = {}
    if config.task == "detection":
        kwargs["annotation_file"] = config.eval.get("annotation_file") or (
            evaluator.ground_truth_for(config.dataset.name, split,
                                       data_dir=config.dataset.data_dir or None))
        kwargs["category_ids"] = info.category_ids
    if config.task in ("detection", "segmentation") and not kwargs.get("annotation_file"):
        kwargs["originals"] = tasks.load_examples(config, split)
    return kwargs


def _task_evaluation(config, run):
    """The task's evaluation (COCO AP, mIoU, top-1) on the eval split, as a hook.

    What does not change between the periodic evaluations of a run is made once, at the
    first: the compiled predict function (traced once, not at every evaluation) and the
    ground truth it is scored against (the annotation file or the canonical examples).
    """
    eval_data = tasks.eval_dataset(config)
    cache = {}

    def evaluate(run_, split):
        del split  # always the eval split (evaluate_workdir scores others)
        if cache.get("model") is not run_.model:
            cache.update(model=run_.model,
                         predict_fn=evaluator.make_predict_fn(run_.model, config.task),
                         inputs=evaluation_inputs(config, run_.info, config.dataset.eval_split))
        return evaluator.evaluate(
            run_.model, eval_data, config.task, run_.num_classes, class_names=run_.class_names,
            num_images=config.eval.num_images, keep_examples=config.eval.tb_images,
            predict_fn=cache["predict_fn"], **cache["inputs"])

    del run
    return evaluate


def _evaluate_and_record(run, evaluate, writer, step):
    config = run.config
    metrics, kept = evaluate(run, config.dataset.eval_split)
    primary = run.primary_metric
    if run.chief:
        images = [np.asarray(draw_prediction(config.task, k, run.class_names)) for k in kept]
        callbacks_lib.write_eval_summaries(writer, step, metrics, images)
        record = callbacks_lib.write_metrics(run.workdir, step, metrics, config.dataset.eval_split)
        run.checkpoints.maybe_save_best(step, primary, metrics[primary])
    else:
        record = metrics
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    print(f"eval @ step {step}: {shown}", flush=True)
    return record


def draw_prediction(task, kept, class_names):
    """Renders one kept eval example with its predictions (for TensorBoard)."""
    image, pred = kept["image"], kept["prediction"]
    if task == "detection":
        n = int(pred["num_detections"])
        cls = np.where(pred["confidence"][:n] >= 0.3, pred["classes"][:n], -1)
        return show.draw_example(image, pred["boxes"][:n], cls, None, class_names)
    if task == "segmentation":
        return show.draw_example(image, mask=np.argmax(pred, -1).astype(np.int64))
    return show.draw_example(image)


def evaluate_workdir(workdir, split=None, checkpoint="best", num_images=None):
    """Evaluates a trained workdir (best or latest checkpoint) on `split`.

    Writes `metrics.json` (for the eval split) or `metrics_<split>.json`, TensorBoard
    summaries under `tb/eval_<split>` and, for detection, the detections as a COCO results
    file `detections_<split>.json` (original pixels and ids).

    Returns:
      The metrics dict.
    """
    if num_images is not None and num_images < 0:
        raise ValueError(f"num_images must be >= 0 (0 = all), got {num_images}")
    config = config_lib.load(workdir)
    split = split or config.dataset.eval_split
    _setup(config)
    run = Run(config, workdir)
    path = checkpoints.find_checkpoint(workdir, checkpoint)
    run.checkpoints.restore(path)
    step = checkpoints.step_of(path)
    data = tasks.eval_dataset(config, split=split)
    detections = (os.path.join(workdir, f"detections_{split}.json")
                  if config.task == "detection" else None)
    metrics, _ = evaluator.evaluate(
        run.model, data, config.task, run.num_classes, class_names=run.class_names,
        num_images=config.eval.num_images if num_images is None else num_images,
        detections_file=detections, **evaluation_inputs(config, run.info, split))
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tb", f"eval_{split}"))
    callbacks_lib.write_eval_summaries(writer, step, metrics)
    record = {"step": step, "split": split, "checkpoint": path, **metrics}
    name = "metrics.json" if split == config.dataset.eval_split else f"metrics_{split}.json"
    atomic.write_json(os.path.join(workdir, name), record, "metrics", indent=2, default=float)
    return record
