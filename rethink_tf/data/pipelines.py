"""tf.data pipelines: canonical examples -> augmented, batched Keras-CV inputs.

A batch is a dict in Keras-CV's conventions:
  images:             float32 [B, H, W, 3], pixel values 0..255 (models normalise inside)
  bounding_boxes:     {"boxes": float32 [B, M, 4] xyxy pixels, "classes": float32 [B, M]},
                      padded with -1 rows to `max_boxes`                         (detection)
  segmentation_masks: int32 [B, H, W, 1], 255 = ignore                           (segmentation)
  labels:             int32 [B]                                                  (classification)
  source_id:          string [B]
  image_info:         float32 [B, 4, 2], maps outputs back to original pixels (see augment)

A student batch is a pair `(human_batch, pseudo_batch)` of fixed sizes (`mix_streams`).
"""

import tensorflow as tf

from rethink_tf.data import augment as augment_lib
from rethink_tf.data import example as ex

TASKS = ("detection", "segmentation", "classification")
DEFAULT_MAX_BOXES = 100


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")


def _require(example_spec, keys, task, what):
    missing = [k for k in keys if k not in example_spec]
    if missing:
        raise ValueError(f"{what}: task '{task}' needs example keys {missing}, but the source "
                         f"yields only {sorted(example_spec)}")


def pad_boxes(boxes, classes, max_boxes):
    """Pads (or truncates) boxes/classes to `max_boxes` rows of -1 (Keras-CV's dense format)."""
    boxes = boxes[:max_boxes]
    classes = tf.cast(classes[:max_boxes], tf.float32)
    pad = max_boxes - tf.shape(boxes)[0]
    boxes = tf.pad(boxes, [[0, pad], [0, 0]], constant_values=-1.0)
    classes = tf.pad(classes, [[0, pad]], constant_values=-1.0)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(classes, [max_boxes])


def to_model_example(example, task, max_boxes=DEFAULT_MAX_BOXES):
    """Turns an augmented canonical example into one row of a Keras-CV batch."""
    out = {"images": tf.cast(example[ex.IMAGE], tf.float32)}
    if ex.SOURCE_ID in example:
        out["source_id"] = example[ex.SOURCE_ID]
    if "image_info" in example:
        out["image_info"] = example["image_info"]
    if task == "detection":
        boxes, classes = pad_boxes(example[ex.BOXES], example[ex.CLASSES], max_boxes)
        out["bounding_boxes"] = {"boxes": boxes, "classes": classes}
    elif task == "segmentation":
        out["segmentation_masks"] = tf.cast(example[ex.MASK], tf.int32)
    elif task == "classification":
        out["labels"] = tf.cast(example[ex.LABEL], tf.int32)
    return out


def _select_keys(example, task):
    """Keeps the keys a task reads, so unused fields (hidden ground truth) never flow on."""
    keys = {ex.IMAGE, ex.SOURCE_ID}
    keys |= {"detection": {ex.BOXES, ex.CLASSES}, "segmentation": {ex.MASK},
             "classification": {ex.LABEL}}[task]
    return {k: v for k, v in example.items() if k in keys}


def preprocess(examples, task, *, image_size, policy="s1", training=True,
               max_boxes=DEFAULT_MAX_BOXES, mask_class_offset=None):
    """Maps canonical examples to augmented, unbatched model examples.

    Args:
      examples: `tf.data.Dataset` of canonical examples.
      task: detection | segmentation | classification.
      image_size: int or (height, width) of the model input.
      policy: augmentation strength s1..s4 (training only).
      training: evaluation uses a plain resize-and-pad instead of the policy.
      max_boxes: rows of the padded box tensor.
      mask_class_offset: re-tighten boxes to mask pixels after geometry (see augment).

    Returns:
      `tf.data.Dataset` of unbatched model examples.
    """
    _check_task(task)
    spec = examples.element_spec
    ex.check_example_spec(spec)
    needed = {"detection": [ex.BOXES, ex.CLASSES], "segmentation": [ex.MASK],
              "classification": [ex.LABEL]}[task]
    _require(spec, needed, task, "preprocess")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if task == "detection" and ex.MASK in spec and mask_class_offset is not None:
        augment_fn = augment_lib.make_augment_fn(
            policy, size, training=training, mask_class_offset=mask_class_offset)
        select = lambda e: {k: v for k, v in e.items() if k != ex.LABEL}  # noqa: E731
    else:
        augment_fn = augment_lib.make_augment_fn(policy, size, training=training)
        select = lambda e: _select_keys(e, task)  # noqa: E731

    def fn(example):
        return to_model_example(augment_fn(select(example)), task, max_boxes)

    return examples.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)


def batch(model_examples, batch_size, *, training=True, shuffle_buffer=1024, seed=None,
          drop_remainder=None):
    """Shuffles (training), repeats (training), batches and prefetches model examples."""
    if training:
        model_examples = model_examples.shuffle(shuffle_buffer, seed=seed,
                                                reshuffle_each_iteration=True).repeat()
    drop = training if drop_remainder is None else drop_remainder
    return model_examples.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


def build_dataset(examples, task, *, image_size, batch_size, policy="s1", training=True,
                  max_boxes=DEFAULT_MAX_BOXES, shuffle_buffer=1024, seed=None,
                  mask_class_offset=None, cache=False):
    """Canonical examples -> batched Keras-CV inputs (train: shuffled, repeated, augmented).

    Args:
      examples: `tf.data.Dataset` of canonical examples.
      task, image_size, policy, training, max_boxes, mask_class_offset: see `preprocess`.
      batch_size: examples per batch (per replica when called from `distribute`).
      shuffle_buffer: shuffle buffer size (training).
      seed: shuffle seed.
      cache: cache decoded canonical examples in memory before augmentation (small sets).

    Returns:
      `tf.data.Dataset` of batches.
    """
    if cache:
        examples = examples.cache()
    model_examples = preprocess(examples, task, image_size=image_size, policy=policy,
                                training=training, max_boxes=max_boxes,
                                mask_class_offset=mask_class_offset)
    return batch(model_examples, batch_size, training=training, shuffle_buffer=shuffle_buffer,
                 seed=seed)


def distribute(strategy, dataset_fn, global_batch_size):
    """Builds a per-replica dataset on each input worker.

    Args:
      strategy: a `tf.distribute.Strategy`.
      dataset_fn: `fn(per_replica_batch_size, input_context) -> tf.data.Dataset`; it should
        shard its input with `input_context.input_pipeline_id` when there are several
        input pipelines.
      global_batch_size: batch size summed over replicas; must divide evenly.

    Returns:
      A distributed dataset from `strategy.distribute_datasets_from_function`.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                         f"{replicas} replicas of the strategy")

    def fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        return dataset_fn(per_replica, input_context)

    return strategy.distribute_datasets_from_function(fn)


def shard_for(examples, input_context):
    """Shards canonical examples across input pipelines (no-op for a single pipeline)."""
    if input_context is None or input_context.num_input_pipelines <= 1:
        return examples
    return examples.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def pseudo_batch_size(human_batch_size, ratio):
    """Pseudo-labelled images per batch for a pseudo:human `ratio` (at least one)."""
    if ratio <= 0:
        raise ValueError(f"self_training.ratio must be > 0, got {ratio}")
    return max(1, int(round(human_batch_size * ratio)))


def mix_streams(human, pseudo, ratio=1.0, *, human_batch_size, seed=None,
                shuffle_buffer=1024):
    """Pairs human and pseudo-labelled batches of fixed sizes, for a student train_step.

    Both streams are shuffled and repeated independently, so every batch holds exactly
    `human_batch_size` human images and `round(ratio * human_batch_size)` pseudo ones, however
    large either set is.

    Args:
      human: `tf.data.Dataset` of unbatched model examples (from `preprocess`).
      pseudo: the same for pseudo-labelled examples (same task and image size).
      ratio: pseudo:human images per batch.
      human_batch_size: human images per batch.
      seed: shuffle seed.
      shuffle_buffer: shuffle buffer of each stream.

    Returns:
      `tf.data.Dataset` of `(human_batch, pseudo_batch)` pairs.
    """
    n_pseudo = pseudo_batch_size(human_batch_size, ratio)
    h_spec, p_spec = human.element_spec, pseudo.element_spec
    h_keys, p_keys = set(h_spec), set(p_spec)
    if h_keys != p_keys:
        raise ValueError(f"mix_streams: human and pseudo examples differ in keys: "
                         f"{sorted(h_keys ^ p_keys)}")
    human = batch(human, human_batch_size, shuffle_buffer=shuffle_buffer, seed=seed)
    pseudo = batch(pseudo, n_pseudo, shuffle_buffer=shuffle_buffer,
                   seed=None if seed is None else seed + 1)
    return tf.data.Dataset.zip((human, pseudo)).prefetch(tf.data.AUTOTUNE)


def split_inputs(batch_dict, task):
    """Splits a batch dict into (images, targets) as Keras-CV models take them."""
    images = batch_dict["images"]
    if task == "detection":
        return images, batch_dict["bounding_boxes"]
    if task == "segmentation":
        return images, batch_dict["segmentation_masks"]
    return images, batch_dict["labels"]
