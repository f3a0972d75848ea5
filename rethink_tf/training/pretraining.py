"""Pre-training that detection and segmentation start from: supervised and SimCLR.

  supervised (`pretrain`): a classifier trained by `trainer.train` (task classification:
      softmax cross-entropy with label smoothing, augment s1..s4, warm-up + cosine); its
      backbone's weights are written to `workdir/backbone.weights.h5`.
  self-supervised (`simclr_pretrain`): SimCLR on unlabeled images (`config.simclr`); its
      backbone's weights go to the same file, and a linear probe on the labelled
      `config.dataset` measures the representation (`top1` in `workdir/metrics.json`, with
      `"protocol": "linear_probe"`).

Either workdir is then a `--config.init=pretrained:<workdir>` for `rethink_tf.train`. Backbone
weights do not depend on the image size (convolutions and batch norm only), so a backbone
pre-trained at 64 px loads into a detector at 128 px.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from rethink_tf.data import example as ex
from rethink_tf.data import pipelines
from rethink_tf.data import simclr_augment
from rethink_tf.data import sources
from rethink_tf.models import backbones
from rethink_tf.training import config as config_lib
from rethink_tf.training import simclr as simclr_lib
from rethink_tf.training import tasks
from rethink_tf.training import trainer


def is_simclr(config):
    """True if `config` describes SimCLR pre-training (it has a `simclr` section)."""
    return "simclr" in config


def run(config, workdir):
    """Runs the pre-training that `config` describes (SimCLR or supervised); see the module."""
    if is_simclr(config):
        return simclr_pretrain(config, workdir)
    return pretrain(config, workdir)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def backbone_weights_path(workdir):
    return os.path.join(workdir, tasks.BACKBONE_WEIGHTS)


# ----------------------------------------------------------------------------------------
# Supervised ("ImageNet", "ImageNet++").
# ----------------------------------------------------------------------------------------

def pretrain(config, workdir, extra_callbacks=()):
    """Trains a classifier as `config` says and saves its backbone for `init=pretrained:`.

    With `self_training.pseudo_labels` (classification pseudo labels of the corpus's
    unlabeled images, from `python -m rethink_tf.pseudo_label` with a classifier teacher) the
    classifier is a noisy student: human and pseudo-labelled images in every batch, loss
    normalisation, noised by `augment`, `model.dropout` and `model.drop_path_rate`.

    Resumes like `trainer.train`; a finished run only (re)writes the backbone weights.

    Args:
      config: a classification config (e.g. `experiments/configs/pretrain_classification.py`).
      workdir: the run's directory; gets `backbone.weights.h5` (+ `backbone.backbone.json`).
      extra_callbacks: more Keras callbacks for `trainer.train`.

    Returns:
      The final metrics (`top1` on the eval split) plus `backbone_weights`, the weights path.

    Raises:
      ValueError: if `config.task` is not classification, or the config is invalid.
    """
    if config.task != "classification":
        raise ValueError(f"config.task: supervised pre-training trains a classifier; got "
                         f"{config.task!r} (use task='classification')")
    if config.self_training.pseudo_labels:  # noisy student on the corpus: "ImageNet++"
        from rethink_tf.training import student  # pylint: disable=g-import-not-at-top
        hooks = trainer.Hooks(build_model=student.build_student_model,
                              train_data=student.student_dataset, after_training=save_backbone)
    else:
        hooks = trainer.Hooks(after_training=save_backbone)
    return trainer.train(config, workdir, extra_callbacks=extra_callbacks, hooks=hooks)


def save_backbone(run):
    """`Hooks.after_training` of pre-training: the backbone's weights for `init=pretrained:`."""
    path = backbone_weights_path(run.workdir)
    if run.chief:
        backbones.save_backbone_weights(run.model.backbone, path)
        print(f"Backbone weights written to {path}", flush=True)
    return {"backbone_weights": path}


# ----------------------------------------------------------------------------------------
# SimCLR.
# ----------------------------------------------------------------------------------------

def _unlabeled_source(config):
    """(name, split) of the images SimCLR learns from."""
    s = config.simclr
    if not s.unlabeled:
        return config.dataset.name, config.dataset.train_split
    split = s.unlabeled_split or (
        "all" if s.unlabeled.startswith((sources.IMAGES_PREFIX, sources.COCO_JSON_PREFIX))
        else "train")
    return s.unlabeled, split


def _fail(field, message):
    raise ValueError(f"config.simclr.{field}: {message}")


def validate_simclr(config):
    """`config_lib.validate` plus the `simclr` section; raises ValueError naming the field."""
    config_lib.validate(config)
    s = config.simclr
    if s.temperature <= 0:
        _fail("temperature", f"must be > 0, got {s.temperature}")
    if s.projection_dim <= 0:
        _fail("projection_dim", f"must be > 0, got {s.projection_dim}")
    if not 0.0 < s.crop_min_area <= 1.0:
        _fail("crop_min_area", f"{s.crop_min_area} is not in (0, 1]")
    for field in ("color_prob", "grayscale_prob", "blur_prob"):
        if not 0.0 <= s[field] <= 1.0:
            _fail(field, f"{s[field]} is not in [0, 1]")
    if s.probe_epochs <= 0:
        _fail("probe_epochs", f"must be > 0, got {s.probe_epochs}")
    if s.flip:
        name, _ = _unlabeled_source(config)
        if not config_lib.hflip(config, name):
            _fail("flip", f"a mirrored image of {name} is another image (a mirrored digit or "
                          f"glyph is another glyph; dataset.hflip="
                          f"{config.dataset.get('hflip', 'auto')!r}); set simclr.flip=False, "
                          "or dataset.hflip='on' to flip anyway")
    if s.unlabeled:
        name, split = _unlabeled_source(config)
        try:
            src = sources.info(name, data_dir=config.dataset.data_dir or None)
        except Exception as e:  # noqa: BLE001  (any failure means the source is unusable)
            _fail("unlabeled", f"cannot open {name!r}: {e}")
        base = split.split("[")[0].split("+")[0]
        if src.splits and base not in src.splits:
            _fail("unlabeled_split", f"split {split!r} not in {name} "
                                     f"(splits: {', '.join(src.splits)})")


def view_kwargs(config):
    """Keyword arguments of `simclr_augment.simclr_view` from `config.simclr`."""
    s = config.simclr
    return dict(crop_min_area=s.crop_min_area, flip=bool(s.flip),
                color_strength=s.color_strength, color_prob=s.color_prob,
                grayscale_prob=s.grayscale_prob, blur_prob=s.blur_prob)


def simclr_dataset(config, batch_size, input_context=None):
    """Batches of `(view1, view2)`, float32 [B, S, S, 3] each, from unlabeled images.

    Labels (if the source has any) are dropped before augmentation.
    """
    name, split = _unlabeled_source(config)
    examples = sources.load(name, split, data_dir=config.dataset.data_dir or None,
                            shuffle_files=True)
    examples = pipelines.shard_for(examples, input_context)
    examples = examples.map(lambda e: {ex.IMAGE: e[ex.IMAGE]})
    if config.dataset.cache:
        examples = examples.cache()
    size = int(config.dataset.image_size)
    views = examples.shuffle(config.dataset.shuffle_buffer, seed=config.seed,
                             reshuffle_each_iteration=True).repeat()
    views = views.map(simclr_augment.make_views_fn((size, size), **view_kwargs(config)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return views.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def build_simclr_model(config):
    """The `SimCLR` model of `config` (call under the strategy's scope)."""
    m, s = config.model, config.simclr
    kwargs = {"drop_path_rate": m.drop_path_rate} if m.drop_path_rate else {}
    return simclr_lib.build_simclr(
        m.backbone, int(config.dataset.image_size), projection_dim=s.projection_dim,
        hidden_dim=s.hidden_dim, temperature=s.temperature, backbone_kwargs=kwargs,
        sync_batchnorm=m.sync_batchnorm)


def simclr_hooks():
    """SimCLR's hooks for `trainer.train`: its model, view pairs, linear-probe evaluation."""

    def compile_model(model, config, optimizer):
        model.compile(optimizer=optimizer, jit_compile=bool(config.train.xla))

    def train_data(config, info, batch_size, input_context, start_step=0):
        # SimCLR's views are not indexed by position: a resumed run continues with fresh
        # (seeded) views rather than exactly those an uninterrupted run would have drawn.
        del info, start_step
        return simclr_dataset(config, batch_size, input_context)

    def evaluate(run, split):
        del split
        probe = linear_probe(run.model.backbone, run.config)
        print(f"linear probe @ step {run.step}: top1={probe['top1']:.4f} "
              f"(train {probe['train_top1']:.4f})", flush=True)
        return probe, []

    return trainer.Hooks(validate=validate_simclr, build_model=build_simclr_model,
                         compile_model=compile_model, train_data=train_data,
                         evaluate=evaluate, primary_metric="top1",
                         after_training=save_backbone)


def simclr_pretrain(config, workdir, extra_callbacks=()):
    """SimCLR pre-training, then backbone weights and a linear probe; resumes like `train`.

    Args:
      config: a config with a `simclr` section (`experiments/configs/pretrain_simclr.py`).
      workdir: the run's directory: config.json, checkpoints/, tb/, backbone.weights.h5,
        metrics.json (`top1` of the linear probe on `dataset.eval_split`; also every
        `train.eval_every` steps when that is set).
      extra_callbacks: more Keras callbacks.

    Returns:
      The metrics dict written to `metrics.json`, plus `backbone_weights`.
    """
    return trainer.train(config, workdir, extra_callbacks=extra_callbacks,
                         hooks=simclr_hooks())


# ----------------------------------------------------------------------------------------
# Linear probe: a frozen backbone's pooled features -> a linear softmax classifier.
# ----------------------------------------------------------------------------------------

def extract_features(backbone, dataset, num_images=0):
    """Pooled features and labels of eval-style batches (no augmentation).

    Args:
      backbone: a backbone (run with `training=False`: batch norm uses moving statistics).
      dataset: batches with `images` and `labels` (`tasks.eval_dataset`).
      num_images: stop after this many (0 = all).

    Returns:
      (features float32 [N, C], labels int64 [N]).
    """
    pool = keras.layers.GlobalAveragePooling2D()

    @tf.function(reduce_retracing=True)
    def features(images):
        return tf.cast(pool(backbone(images, training=False)), tf.float32)

    feats, labels, seen = [], [], 0
    for batch in dataset:
        feats.append(features(batch["images"]).numpy())
        labels.append(batch["labels"].numpy())
        seen += len(labels[-1])
        if num_images and seen >= num_images:
            break
    feats, labels = np.concatenate(feats), np.concatenate(labels).astype(np.int64)
    if num_images:
        feats, labels = feats[:num_images], labels[:num_images]
    return feats, labels


def fit_linear_classifier(train_x, train_y, num_classes, *, epochs=30, batch_size=256,
                          learning_rate=1e-2, seed=0):
    """Trains softmax regression on standardised features (Adam, full passes).

    Returns:
      `predict(features) -> class ids` and the training accuracy.
    """
    mean = train_x.mean(0, keepdims=True)
    std = train_x.std(0, keepdims=True) + 1e-6
    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input((train_x.shape[1],)), keras.layers.Dense(num_classes)])
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    head.fit((train_x - mean) / std, train_y, batch_size=min(batch_size, len(train_x)),
             epochs=epochs, shuffle=True, verbose=0)

    def predict(x):
        return np.argmax(head.predict((x - mean) / std, batch_size=1024, verbose=0), -1)

    return predict, float(np.mean(predict(train_x) == train_y))


def linear_probe(backbone, config):
    """Linear-probe accuracy of `backbone` on the labelled `config.dataset`.

    Features of `dataset.train_split` (the first `simclr.probe_train_examples`, 0 = all)
    train the linear classifier; `top1` is measured on `dataset.eval_split`. Both use the
    evaluation preprocessing (resize and pad, no augmentation).

    Returns:
      {"top1", "train_top1", "num_train", "num_images", "protocol": "linear_probe"}.
    """
    probe = config.get("simclr") or {}
    epochs = int(probe.get("probe_epochs", 30))
    limit = int(probe.get("probe_train_examples", 0))
    lr = float(probe.get("probe_learning_rate", 1e-2))
    n_classes = tasks.num_classes(config)
    batch = int(config.eval.batch_size)
    train_x, train_y = extract_features(
        backbone, tasks.eval_dataset(config, split=config.dataset.train_split, batch_size=batch),
        num_images=limit)
    eval_x, eval_y = extract_features(backbone, tasks.eval_dataset(config, batch_size=batch),
                                      num_images=int(config.eval.num_images))
    logging.info("linear probe: %d train / %d eval features of size %d", len(train_x),
                 len(eval_x), train_x.shape[1])
    predict, train_top1 = fit_linear_classifier(train_x, train_y, n_classes, epochs=epochs,
                                                learning_rate=lr, seed=int(config.seed))
    return {"top1": float(np.mean(predict(eval_x) == eval_y)), "train_top1": train_top1,
            "num_train": int(len(train_x)), "num_images": int(len(eval_x)),
            "protocol": "linear_probe"}


def probe_workdir(workdir, config=None):
    """Linear probe of the backbone a pre-training workdir saved (supervised or SimCLR).

    Args:
      workdir: a workdir holding `backbone.weights.h5` and `config.json`.
      config: the labelled data and probe settings (default: the workdir's own config).

    Returns:
      The probe's metrics (see `linear_probe`), also written to `workdir/probe.json`.
    """
    config = config or config_lib.load(workdir)
    path = backbone_weights_path(workdir)
    meta_path = path[: -len(".weights.h5")] + ".backbone.json"
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{workdir!r} has no {tasks.BACKBONE_WEIGHTS}: pre-train first")
    with open(meta_path) as f:
        name = json.load(f)["backbone"]
    size = int(config.dataset.image_size)
    backbone = backbones.build_backbone(name, input_shape=(size, size, 3))
    backbones.load_backbone_weights(backbone, path)
    metrics = linear_probe(backbone, config)
    with open(os.path.join(workdir, "probe.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics

