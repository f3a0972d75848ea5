"""tf.data pipelines: canonical examples -> augmented, batched Keras-CV inputs.

A batch is a dict in Keras-CV's conventions:
  images:             float32 [B, H, W, 3], pixel values 0..255 (models normalise inside)
  bounding_boxes:     {"boxes": float32 [B, M, 4] xyxy pixels, "classes": float32 [B, M]},
                      padded with -1 rows to `max_boxes`                         (detection)
  segmentation_masks: int32 [B, H, W, 1], 255 = ignore                           (segmentation)
  labels:             int32 [B]                                                  (classification)
  source_id:          string [B]
  image_info:         float32 [B, 4, 2], maps outputs back to original pixels (see augment)

A student or joint batch is a dict of named streams, `{"human": batch, "pseudo": batch,
"classification": batch}`, each of a fixed size (`mix_streams`; `STREAMS`).

Training data is a pure function of (seed, stream, example counter): `seeded_examples` orders
canonical examples epoch by epoch with a per-epoch shuffle seed and numbers them, and
`preprocess(..., seed=stream_seed(...))` augments example i with a stateless seed derived from
i. A run resumed at step k builds the stream from example k x (examples per step) on and sees
exactly the batches an uninterrupted run sees.
"""

import zlib

import tensorflow as tf

from rethink_tf.data import augment as augment_lib
from rethink_tf.data import example as ex

TASKS = ("detection", "segmentation", "classification")
# The named streams of a student / joint batch: target-task human labels, the teacher's pseudo
# labels (same task) and the classification set of joint training.
HUMAN, PSEUDO, CLASSIFICATION = "human", "pseudo", "classification"
STREAMS = (HUMAN, PSEUDO, CLASSIFICATION)
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
               max_boxes=DEFAULT_MAX_BOXES, mask_class_offset=None, seed=None, hflip=True):
    """Maps canonical examples to augmented, unbatched model examples.

    Args:
      examples: `tf.data.Dataset` of canonical examples, or, with `seed`, of
        `(counter, example)` pairs (from `seeded_examples`).
      task: detection | segmentation | classification.
      image_size: int or (height, width) of the model input.
      policy: augmentation strength s1..s4 (training only).
      training: evaluation uses a plain resize-and-pad instead of the policy.
      max_boxes: rows of the padded box tensor.
      mask_class_offset: re-tighten boxes to mask pixels after geometry (see augment).
      seed: a stream seed (`stream_seed`): example `counter` is augmented with the stateless
        seed `example_seed(seed, counter)`, so the output is a pure function of the input
        pairs and the map stays deterministic however parallel. None: seeds are drawn from
        the global generator (and training output order is not deterministic).
      hflip: whether the policy may flip horizontally; pass
        `sources.hflip_keeps_labels(dataset name)` (False for `digit_scenes`, whose digits and
        glyphs a mirror turns into other glyphs). Only the flip is affected.

    Returns:
      `tf.data.Dataset` of unbatched model examples.
    """
    _check_task(task)
    spec = examples.element_spec
    if seed is not None:
        spec = spec[1]
    ex.check_example_spec(spec)
    needed = {"detection": [ex.BOXES, ex.CLASSES], "segmentation": [ex.MASK],
              "classification": [ex.LABEL]}[task]
    _require(spec, needed, task, "preprocess")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if task == "detection" and ex.MASK in spec and mask_class_offset is not None:
        augment_fn = augment_lib.make_augment_fn(
            policy, size, training=training, mask_class_offset=mask_class_offset, hflip=hflip)
        select = lambda e: {k: v for k, v in e.items() if k != ex.LABEL}  # noqa: E731
    else:
        augment_fn = augment_lib.make_augment_fn(policy, size, training=training, hflip=hflip)
        select = lambda e: _select_keys(e, task)  # noqa: E731

    if seed is None:
        def fn(example):
            return to_model_example(augment_fn(select(example)), task, max_boxes)
        deterministic = not training
    else:
        augment_base = _domain(seed, _AUGMENT_DOMAIN)

        def fn(counter, example):
            example_seed = tf.random.experimental.stateless_fold_in(augment_base, counter)
            return to_model_example(augment_fn(select(example), seed=example_seed), task,
                                    max_boxes)
        deterministic = True

    return examples.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


# Separate seed domains, so shuffle orders and augmentations never share a seed.
_SHUFFLE_DOMAIN, _AUGMENT_DOMAIN = 0, 1


def _domain(seed, domain):
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), domain)


def stream_seed(seed, stream, pipeline_id=0):
    """The int64 [2] seed of one named data stream on one input pipeline.

    Args:
      seed: the run's seed (config.seed).
      stream: the stream's name ("train", "human", "pseudo", ...); different names give
        independent shuffles and augmentations.
      pipeline_id: the input pipeline (`input_context.input_pipeline_id`).
    """
    base = tf.constant([int(seed), zlib.crc32(stream.encode())], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, int(pipeline_id))


def count_examples(examples):
    """Examples in a finite dataset: its cardinality when known, else counted (one pass)."""
    n = int(examples.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("count_examples: the dataset is infinite")
    if n == tf.data.UNKNOWN_CARDINALITY:
        n = int(examples.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
    return n


def seeded_examples(examples, *, seed, shuffle_buffer, start=0, num_examples=None):
    """Endless, numbered canonical examples: epoch e is `examples` shuffled by a seed of e.

    The order is a pure function of `seed` (and of the order of `examples`, which must be
    deterministic): the shuffle is seeded per epoch (not by TensorFlow's global seed), and
    example `start` of the stream is found by skipping whole epochs arithmetically and then
    at most one epoch of canonical (not yet augmented) examples.

    Args:
      examples: finite `tf.data.Dataset` of canonical examples, in a fixed order.
      seed: a stream seed (`stream_seed`).
      shuffle_buffer: shuffle buffer (examples) within an epoch.
      start: counter of the first example produced (examples already consumed).
      num_examples: examples per epoch, if known (else from cardinality, or counted when
        `start` > 0).

    Returns:
      `tf.data.Dataset` of `(counter, example)` pairs, counter = start, start + 1, ...
    """
    start = int(start)
    n = num_examples
    if n is None and (start > 0 or int(examples.cardinality()) >= 0):
        # Counting an unknown size costs a pass; only a resumed stream needs the epoch length.
        n = count_examples(examples)
    if n == 0 or (n is None and tf.executing_eagerly()
                  and next(iter(examples.take(1)), None) is None):
        raise ValueError("seeded_examples: the training source has no examples")
    first_epoch, offset = divmod(start, n) if n else (0, start)
    shuffle_base = _domain(seed, _SHUFFLE_DOMAIN)

    def one_epoch(epoch):
        # Dataset.shuffle mixes the global seed (tf.random.set_seed) into its seed; clearing
        # it in this function's graph makes the order depend on our seed alone.
        tf.compat.v1.get_default_graph().seed = None
        epoch_seed = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(shuffle_base, epoch),
            minval=None, maxval=None, dtype=tf.int64)
        return examples.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    stream = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(one_epoch)
    return stream.skip(offset).enumerate(start=start)


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
                  mask_class_offset=None, cache=False, hflip=True):
    """Canonical examples -> batched Keras-CV inputs (train: shuffled, repeated, augmented).

    Args:
      examples: `tf.data.Dataset` of canonical examples.
      task, image_size, policy, training, max_boxes, mask_class_offset, hflip: see
        `preprocess`.
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
                                mask_class_offset=mask_class_offset, hflip=hflip)
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
    """Pseudo-labelled images per batch: `human_batch_size x ratio`, which must be a whole number.

    Raises:
      ValueError: `ratio` <= 0, or the product is not a positive integer (naming
        `self_training.ratio`).
    """
    if ratio <= 0:
        raise ValueError(f"self_training.ratio must be > 0, got {ratio}")
    product = human_batch_size * ratio
    pseudo = int(round(product))
    # A tolerance for ratios such as 0.1 that binary floats do not hold exactly.
    if pseudo < 1 or abs(product - pseudo) > 1e-6 * max(1.0, product):
        raise ValueError(f"self_training.ratio={ratio} x a human batch of {human_batch_size} "
                         f"images is {product:g} pseudo images, not a whole positive number; "
                         f"choose a ratio that gives one")
    return pseudo


def global_pseudo_batch(global_human_batch, ratio, num_replicas=1):
    """The global pseudo batch (`global_human_batch x ratio`), checked to split over replicas.

    The pseudo:human ratio is a property of the global batch: it is fixed there and then
    split, so it does not drift with the replica count.

    Args:
      global_human_batch: human images per step, over all replicas (train.batch_size).
      ratio: self_training.ratio.
      num_replicas: replicas in sync.

    Returns:
      Pseudo-labelled images per step, over all replicas.

    Raises:
      ValueError: the product is not a whole number, or does not divide by `num_replicas`.
    """
    pseudo = pseudo_batch_size(global_human_batch, ratio)
    if pseudo % num_replicas:
        raise ValueError(f"self_training.ratio={ratio} gives a global pseudo batch of {pseudo} "
                         f"images, which does not divide over {num_replicas} replicas")
    return pseudo


def mix_streams(streams, batch_sizes, *, seed=None, shuffle_buffer=1024):
    """Batches of named streams, each of a fixed size, for a student or joint train_step.

    Every stream is shuffled and repeated on its own, so every batch holds exactly
    `batch_sizes[name]` examples of each stream however large its set is. Not seeded per
    example: training uses `tasks.stream_dataset`, whose streams are pure functions of the
    seed (resumable).

    Args:
      streams: {name: `tf.data.Dataset` of unbatched model examples (from `preprocess`)};
        names from `STREAMS`. `human` and `pseudo` must hold the same task's keys.
      batch_sizes: {name: examples per batch} for every stream (see `pseudo_batch_size`).
      seed: shuffle seed (each stream shuffles with its own seed derived from it).
      shuffle_buffer: shuffle buffer of each stream.

    Returns:
      `tf.data.Dataset` of {name: batch dict}.
    """
    check_streams(streams, batch_sizes)
    batched = {}
    for name, stream in streams.items():
        shuffle_seed = (None if seed is None
                        else (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**31)
        batched[name] = batch(stream, int(batch_sizes[name]), shuffle_buffer=shuffle_buffer,
                              seed=shuffle_seed)
    return tf.data.Dataset.zip(batched).prefetch(tf.data.AUTOTUNE)


def check_streams(streams, batch_sizes):
    """Raises ValueError unless `streams` are known names with positive batch sizes and the
    `human` and `pseudo` streams (one task) have the same keys."""
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown or not streams:
        raise ValueError(f"streams: names must be among {STREAMS}, got {sorted(streams)}")
    for name in streams:
        size = batch_sizes.get(name)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size of stream {name!r} must be a positive whole number, "
                             f"got {size!r}")
    if HUMAN in streams and PSEUDO in streams:
        check_same_keys(streams[HUMAN], streams[PSEUDO])


def check_same_keys(human, pseudo):
    """Raises unless human and pseudo-labelled model examples have the same keys (one task)."""
    h_keys, p_keys = set(human.element_spec), set(pseudo.element_spec)
    if h_keys != p_keys:
        raise ValueError(f"human and pseudo examples differ in keys: {sorted(h_keys ^ p_keys)}")


def split_inputs(batch_dict, task):
    """Splits a batch dict into (images, targets) as Keras-CV models take them."""
    images = batch_dict["images"]
    if task == "detection":
        return images, batch_dict["bounding_boxes"]
    if task == "segmentation":
        return images, batch_dict["segmentation_masks"]
    return images, batch_dict["labels"]
