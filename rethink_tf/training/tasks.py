"""From a config to the things a run needs: dataset info, model, losses, input pipelines."""

import os

import keras
import keras_cv

from rethink_tf.data import pipelines
from rethink_tf.data import sources
from rethink_tf.models import backbones
from rethink_tf.models import classifier
from rethink_tf.models import detector
from rethink_tf.models import losses
from rethink_tf.models import segmenter
from rethink_tf.models import tracking

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
            head_filters=m.head_filters, model_class=wrap(keras_cv.models.DeepLabV3Plus))
    else:
        model = classifier.build_classifier(m.backbone, n_classes, size,
                                            backbone_kwargs=backbone_kwargs,
                                            dropout=m.get("dropout", 0.0))
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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    directory = os.path.join(workdir, "checkpoints")
    path = (tf.train.latest_checkpoint(os.path.join(directory, "best"))
            or tf.train.latest_checkpoint(directory))
    if path is None:
        raise FileNotFoundError(f"config.init=teacher:{workdir}: no checkpoint in {directory!r}")
    # Only the model: the teacher's optimiser state and step are not the student's.
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return path


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
        return _initialize_from_workdir(model, config.init.split(":", 1)[1])
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


def train_examples(config, info, input_context=None):
    """Augmented, unbatched training examples (not yet shuffled or batched)."""
    fraction = config.dataset.fraction if config.dataset.fraction < 1.0 else None
    examples = load_examples(config, config.dataset.train_split, fraction=fraction,
                             input_context=input_context, shuffle_files=True)
    if config.dataset.cache:
        examples = examples.cache()
    return pipelines.preprocess(examples, config.task, image_size=config.dataset.image_size,
                                policy=config.augment, training=True,
                                max_boxes=config.dataset.max_boxes,
                                mask_class_offset=mask_class_offset(info))


def train_dataset(config, info, batch_size, input_context=None):
    """Batches of (images, targets) for `model.fit`."""
    model_examples = train_examples(config, info, input_context)
    batches = pipelines.batch(model_examples, batch_size, training=True,
                              shuffle_buffer=config.dataset.shuffle_buffer, seed=config.seed)
    return batches.map(lambda b: pipelines.split_inputs(b, config.task))


def eval_dataset(config, split=None, batch_size=None):
    """Evaluation batches (dicts with targets, source_id and image_info), every example once."""
    examples = load_examples(config, split or config.dataset.eval_split)
    model_examples = pipelines.preprocess(
        examples, config.task, image_size=config.dataset.image_size, training=False,
        max_boxes=config.dataset.max_boxes)
    return pipelines.batch(model_examples, batch_size or config.eval.batch_size, training=False)
