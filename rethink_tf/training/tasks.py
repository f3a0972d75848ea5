"""From a config to the things a run needs: dataset info, model, losses, input pipelines."""

import os

import keras
import tensorflow as tf

from rethink_tf.data import pipelines
from rethink_tf.data import sources
from rethink_tf.models import backbones
from rethink_tf.models import classifier
from rethink_tf.models import detector
from rethink_tf.models import losses
from rethink_tf.models import segmenter
from rethink_tf.models import tracking
from rethink_tf.training import checkpoints
from rethink_tf.training import config as config_lib

BACKBONE_WEIGHTS = "backbone.weights.h5"  # written by pretraining into its workdir


def dataset_info(config):
    return sources.info(config.dataset.name, data_dir=config.dataset.data_dir or None)


def num_classes(config, info=None):
    """Classes of the task: `model.num_classes` if set, else the dataset's metadata."""
    if config.model.num_classes:
        return int(config.model.num_classes)
    info = info or dataset_info(config)
    if config.task not in info.num_classes:
        raise ValueError(f"config.task: {config.dataset.name} has no '{config.task}' labels")
    return int(info.num_classes[config.task])


def class_names(config, info=None):
    info = info or dataset_info(config)
    return list(info.class_names.get(config.task, ()))


def build_model(config, n_classes, model_class_fn=None):
    """Builds the task's model from the config (random weights; see `initialize`).

    Args:
      config: the experiment config.
      n_classes: classes of the task.
      model_class_fn: optional `fn(default_class) -> class` to instantiate instead (the
        self-training student adds its train_step this way).
    """
    wrap = model_class_fn or (lambda cls: cls)
    m = config.model
    backbone_kwargs = {"drop_path_rate": m.drop_path_rate} if m.drop_path_rate else {}
    size = config.dataset.image_size
    if config.task == "detection":
        model = detector.build_detector(
            m.backbone, n_classes, size, backbone_kwargs=backbone_kwargs,
            max_level=m.max_level, anchor_sizes=tuple(m.anchor_sizes),
            fpn_filters=m.fpn_filters, head_filters=m.head_filters, head_depth=m.head_depth,
            score_threshold=m.eval_score_threshold, max_detections=m.max_detections,
            model_class=wrap(detector.Detector), head_norm=m.get("head_norm", "none"))
    elif config.task == "segmentation":
        model = segmenter.build_segmenter(
            m.backbone, n_classes, size, backbone_kwargs=backbone_kwargs,
            aspp_filters=m.aspp_filters, projection_filters=m.projection_filters,
            head_filters=m.head_filters, model_class=wrap(segmenter.Segmenter))
    else:
        model = classifier.build_classifier(m.backbone, n_classes, size,
                                            backbone_kwargs=backbone_kwargs,
                                            dropout=m.get("dropout", 0.0),
                                            model_class=wrap(classifier.Classifier))
    if m.sync_batchnorm:
        backbones.set_synchronized_batchnorm(model, True)
    tracking.track_sublayer_lists(model)  # every variable reaches the checkpoints
    return model


def compile_model(model, config, optimizer):
    """Compiles with the task's loss (focal + box loss; ignore-aware CE; smoothed CE)."""
    jit = bool(config.train.xla)
    if config.task == "detection":
        model.compile(optimizer=optimizer, box_loss=config.model.box_loss,
                      classification_loss="focal", jit_compile=jit)
    elif config.task == "segmentation":
        model.compile(optimizer=optimizer, jit_compile=jit,
                      loss=losses.MaskedSparseCategoricalCrossentropy())
    else:
        smoothing = config.train.get("label_smoothing", 0.0)
        model.compile(optimizer=optimizer, jit_compile=jit,
                      loss=_SparseSmoothedCrossentropy(label_smoothing=smoothing),
                      metrics=["sparse_categorical_accuracy"])
    return model


@keras.saving.register_keras_serializable(package="rethink_tf")
class _SparseSmoothedCrossentropy(keras.losses.Loss):
    """Softmax cross-entropy on integer labels with label smoothing, from logits."""

    def __init__(self, label_smoothing=0.0, name="classification_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        n = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"), n)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def _initialize_from_workdir(model, workdir):
    # Strict (same architecture), and the model alone: the teacher's optimiser state, step
    # and loss-normaliser state are not the student's.
    return checkpoints.restore_model(model, workdir, which="best")


def build_restored_model(config, checkpoint_path, n_classes=None):
    """Builds the task's model in float32 and restores its weights from a training checkpoint.

    Strict (`checkpoints.read_model`): every model variable must be in the checkpoint; the
    optimiser and any other state of the run are not read.

    Args:
      config: the config of the run that wrote the checkpoint.
      checkpoint_path: a checkpoint path (`.../ckpt-<step>`).
      n_classes: classes of the task; None = `num_classes(config)`.

    Raises:
      ValueError: the checkpoint does not hold every variable of the model (another
        architecture or config).
    """
    if n_classes is None:
        n_classes = num_classes(config)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # infer in float32 whatever trained
    try:
        model = build_model(config, n_classes)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    checkpoints.read_model(model, checkpoint_path)
    return model


def load_model(workdir, which="best", *, config=None):
    """The one way to use a finished training workdir: its config and its restored model.

    Teacher inference, evaluation, export and pseudo-labelling read workdirs through this.

    Args:
      workdir: a training workdir (config.json + checkpoints/).
      which: "best" (else the latest, with a warning), "latest" or a checkpoint path.
      config: the workdir's config if the caller has already loaded it (None = load it).

    Returns:
      (config, model, checkpoint_path): the run's config, its model in float32 with the
      checkpoint's weights, and the checkpoint restored.

    Raises:
      FileNotFoundError: no config.json, or no such checkpoint.
      ValueError: the checkpoint does not hold every variable of the model.
    """
    if config is None:
        config = config_lib.load(workdir)
    path = checkpoints.find_checkpoint(workdir, which)
    return config, build_restored_model(config, path), path


def backbone_weights_path(init):
    """The backbone weights file named by `config.init` (None for random or teacher)."""
    if init == "random" or init.startswith("teacher:"):
        return None
    kind, path = init.split(":", 1)
    if kind == "pretrained":
        return os.path.join(path, BACKBONE_WEIGHTS)
    return path if path.endswith(".weights.h5") else path + ".weights.h5"


def initialize(model, config):
    """Loads initial weights as `config.init` says (before any checkpoint exists).

    `pretrained:` and `checkpoint:` fill `model.backbone`; `teacher:<workdir>` restores every
    weight of the model from that run's best (else latest) checkpoint (same architecture).
    """
    if config.init.startswith("teacher:"):
        teacher = config.init.split(":", 1)[1]
        config_lib.require_same_architecture(
            config, teacher, f"config.init={config.init!r} restores every weight of that run, "
                             "so the architectures must match")
        return _initialize_from_workdir(model, teacher)
    path = backbone_weights_path(config.init)
    if path is None:
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.init={config.init!r}: no backbone weights at {path!r} "
                                "(pretrain with `python -m rethink_tf.pretrain` first)")
    backbones.load_backbone_weights(model.backbone, path)
    return path


def mask_class_offset(info):
    return getattr(info, "mask_class_offset", None)


def load_examples(config, split, *, fraction=None, input_context=None, shuffle_files=False):
    examples = sources.load(config.dataset.name, split, data_dir=config.dataset.data_dir or None,
                            fraction=fraction, shuffle_files=shuffle_files)
    return pipelines.shard_for(examples, input_context)


def _pipeline(input_context):
    """(input pipeline id, replicas fed by this pipeline per step)."""
    if input_context is None:
        return 0, 1
    return (input_context.input_pipeline_id,
            max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines))


def _seeded_stream(config, examples, stream, input_context, start_example, task_kwargs, *,
                   task=None, image_size=None, policy=None, source=None):
    """Augmented model examples of one named stream, from example `start_example` on.

    `task`, `image_size` and `policy` default to the config's (the target task's streams);
    joint training's classification stream passes its own. `source` (default
    `dataset.name`; pseudo labels follow the human data) decides whether policies flip
    (`config.hflip`).
    """
    pipeline_id, _ = _pipeline(input_context)
    seed = pipelines.stream_seed(config.seed, stream, pipeline_id)
    if config.dataset.cache:
        examples = examples.cache()
    numbered = pipelines.seeded_examples(examples, seed=seed,
                                         shuffle_buffer=config.dataset.shuffle_buffer,
                                         start=start_example)
    return pipelines.preprocess(numbered, task or config.task,
                                image_size=image_size or config.dataset.image_size,
                                policy=policy or config.augment, training=True,
                                max_boxes=config.dataset.max_boxes, seed=seed,
                                hflip=config_lib.hflip(config, source), **task_kwargs)


def _human_examples(config, input_context):
    fraction = config.dataset.fraction if config.dataset.fraction < 1.0 else None
    # Files in their stored order (TFDS writes examples shuffled): a seeded file shuffle would
    # mix in TensorFlow's global seed; `pipelines.seeded_examples` shuffles every epoch.
    return load_examples(config, config.dataset.train_split, fraction=fraction,
                         input_context=input_context, shuffle_files=False)


def train_examples(config, info, input_context=None, start_example=0, stream="train",
                   tighten_boxes=True):
    """Augmented, unbatched, endless training examples (a pure function of config.seed).

    Args:
      config: the experiment config.
      info: `dataset_info(config)`.
      input_context: a `tf.distribute.InputContext` (shards the source, seeds the stream).
      start_example: examples this pipeline has already produced (resume).
      stream: the stream's name (its shuffles and augmentations are its own).
      tighten_boxes: re-tighten boxes to their masks after geometry where the source has
        masks (`mask_class_offset`).
    """
    offset = mask_class_offset(info) if tighten_boxes else None
    return _seeded_stream(config, _human_examples(config, input_context), stream,
                          input_context, start_example, {"mask_class_offset": offset})


def train_dataset(config, info, batch_size, input_context=None, start_step=0):
    """Batches of (images, targets) for `model.fit`, from step `start_step` on.

    Batch b of the result is the same whether the run started at step 0 or resumed at
    `start_step` (data and augmentation are pure functions of config.seed and position).

    Args:
      config: the experiment config.
      info: `dataset_info(config)`.
      batch_size: examples per batch (per replica under a strategy).
      input_context: a `tf.distribute.InputContext`, or None.
      start_step: the training step to start from (the restored step on resume).
    """
    _, replicas = _pipeline(input_context)
    # This pipeline feeds `replicas` batches per step.
    start = int(start_step) * batch_size * replicas
    model_examples = train_examples(config, info, input_context, start_example=start)
    batches = model_examples.batch(batch_size, drop_remainder=True)
    encoder = target_encoder(config)
    return batches.map(lambda b: _split_batch(b, config.task, encoder)).prefetch(
        tf.data.AUTOTUNE)


def _split_batch(batch, task, detection_encoder):
    images, targets = pipelines.split_inputs(batch, task)
    if detection_encoder is not None and task == "detection":
        targets = detection_encoder(images, targets)
    return images, targets


def target_encoder(config):
    """`fn(images, targets) -> targets` encoding a detection batch's anchor targets in the
    input pipeline (`train.encode_targets="pipeline"`), or None (encoded in the step)."""
    if config.task != "detection" or config.train.get("encode_targets", "step") != "pipeline":
        return None
    m = config.model
    return detector.pipeline_target_encoder(detector.build_label_encoder(
        max_level=m.max_level, anchor_sizes=tuple(m.anchor_sizes)))


def pseudo_examples(config, input_context=None):
    """The pseudo-labelled canonical examples of `self_training.pseudo_labels` (fixed order)."""
    name = f"{sources.PSEUDO_PREFIX}{config.self_training.pseudo_labels}"
    # Pseudo shards reshuffle per iteration when shuffled: read them in order.
    examples = sources.load(name, "all", shuffle_files=False)
    return pipelines.shard_for(examples, input_context)


def student_dataset(config, info, human_batch_size, input_context=None, start_step=0):
    """Batches `{"human": (images, targets), "pseudo": (images, targets)}` from `start_step`.

    The global pseudo batch is train.batch_size x self_training.ratio (a whole number that
    divides over the replicas), split per replica like the human one. Both streams are pure
    functions of (config.seed, stream, position), so a resumed run sees the batches an
    uninterrupted one would.

    Args:
      config: the student config.
      info: `dataset_info(config)`.
      human_batch_size: human images per batch (per replica under a strategy).
      input_context: a `tf.distribute.InputContext`, or None.
      start_step: the training step to start from (the restored step on resume).
    """
    num_replicas = input_context.num_replicas_in_sync if input_context is not None else 1
    global_pseudo = pipelines.global_pseudo_batch(human_batch_size * num_replicas,
                                                  config.self_training.ratio, num_replicas)
    pseudo_batch = global_pseudo // num_replicas
    _, replicas = _pipeline(input_context)
    step = int(start_step) * replicas
    # Pseudo boxes cannot be re-tightened (pseudo records carry no masks), so the human
    # boxes are not either: the student sees one box geometry (corner transform) in both.
    human = train_examples(config, info, input_context, start_example=step * human_batch_size,
                           stream=pipelines.HUMAN, tighten_boxes=False)
    pseudo = _seeded_stream(config, pseudo_examples(config, input_context), pipelines.PSEUDO,
                            input_context, step * pseudo_batch, {})
    pipelines.check_same_keys(human, pseudo)
    return stream_batches({pipelines.HUMAN: (human, human_batch_size, config.task),
                           pipelines.PSEUDO: (pseudo, pseudo_batch, config.task)},
                          target_encoder(config))


def stream_batches(streams, detection_encoder=None):
    """Batches of named streams: {name: (images, targets)}, each stream its own batch size.

    Args:
      streams: {name: (unbatched model examples, per-replica batch size, task)}.
      detection_encoder: `target_encoder(config)`: applied to the detection streams' batches.
    """
    batched = {name: examples.batch(size, drop_remainder=True)
               for name, (examples, size, _) in streams.items()}
    tasks_of = {name: task for name, (_, _, task) in streams.items()}
    return tf.data.Dataset.zip(batched).map(
        lambda b: {name: _split_batch(b[name], tasks_of[name], detection_encoder)
                   for name in b}
    ).prefetch(tf.data.AUTOTUNE)


def classification_examples(config, input_context=None, start_example=0):
    """Joint training's classification stream: `joint.dataset`'s images and labels,
    augmented by `joint.augment` at `joint.image_size`, endless, from `start_example` on."""
    j = config.joint
    examples = sources.load(j.dataset, j.split, data_dir=config.dataset.data_dir or None,
                            shuffle_files=False)
    return _seeded_stream(config, pipelines.shard_for(examples, input_context),
                          pipelines.CLASSIFICATION, input_context, start_example, {},
                          task="classification",
                          image_size=int(j.image_size) or int(config.dataset.image_size),
                          policy=j.augment, source=j.dataset)


def joint_dataset(config, info, human_batch_size, input_context=None, start_step=0):
    """Batches `{"human": ..., "classification": ...}` (+ `"pseudo"` when
    `self_training.pseudo_labels` is set) of fixed sizes, from `start_step` on.

    The classification stream has its own global batch, `joint.batch_size`, split over the
    replicas; its images keep their own resolution (`joint.image_size`). Every stream is a
    pure function of (config.seed, stream, position), as in `student_dataset`.

    Raises:
      ValueError: `joint.batch_size` does not divide over the replicas.
    """
    num_replicas = input_context.num_replicas_in_sync if input_context is not None else 1
    global_classification = int(config.joint.batch_size)
    if global_classification % num_replicas:
        raise ValueError(f"joint.batch_size={global_classification} does not divide over "
                         f"{num_replicas} replicas")
    classification_batch = global_classification // num_replicas
    _, replicas = _pipeline(input_context)
    step = int(start_step) * replicas
    if config.self_training.pseudo_labels:
        target = student_dataset(config, info, human_batch_size, input_context, start_step)
    else:
        human = train_examples(config, info, input_context,
                               start_example=step * human_batch_size, stream=pipelines.HUMAN)
        target = stream_batches({pipelines.HUMAN: (human, human_batch_size, config.task)},
                                target_encoder(config))
    classification = stream_batches({pipelines.CLASSIFICATION: (
        classification_examples(config, input_context, step * classification_batch),
        classification_batch, "classification")})
    return tf.data.Dataset.zip(target, classification).map(lambda a, b: {**a, **b})


def eval_dataset(config, split=None, batch_size=None):
    """Evaluation batches (dicts with targets, source_id and image_info), every example once."""
    examples = load_examples(config, split or config.dataset.eval_split)
    model_examples = pipelines.preprocess(
        examples, config.task, image_size=config.dataset.image_size, training=False,
        max_boxes=config.dataset.max_boxes)
    return pipelines.batch(model_examples, batch_size or config.eval.batch_size, training=False)
