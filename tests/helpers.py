"""The one tiny-config helper of the tests (a helper module, not a test module)."""

import tensorflow as tf

from rethink_tf.training import config as config_lib


def tiny_config(task, data_dir="", dataset=None, steps=2):
    """A config of `task` on the tiny `digit_scenes` data: resnet_tiny, 64 px, narrow heads,
    batch 4, `steps` steps, checkpoints every 2, evaluation of 8 images at the end only.

    Args:
      task: detection | segmentation | classification (32 px).
      data_dir: the TFDS data dir holding the tiny configs (the `digit_scenes_data_dir`
        fixture); "" when only models are built.
      dataset: another source name (e.g. `coco/2017` under TFDS mock data).
      steps: training steps.
    """
    c = config_lib.base_config(task)
    c.dataset.name = dataset or {"detection": "digit_scenes/detection_tiny",
                                 "segmentation": "digit_scenes/detection_tiny",
                                 "classification": "digit_scenes/classification_tiny"}[task]
    c.dataset.data_dir = data_dir
    c.dataset.image_size = 64
    c.dataset.shuffle_buffer = 16
    c.model.backbone = "resnet_tiny"
    c.model.anchor_sizes = (16.0, 32.0, 64.0)
    c.model.fpn_filters = 8
    c.model.head_filters = 8
    c.model.head_depth = 1
    c.model.aspp_filters = 8
    c.model.projection_filters = 8
    c.train.steps = steps
    c.train.batch_size = 4
    c.train.warmup_steps = 1
    c.train.checkpoint_every = 2
    c.train.eval_every = 0
    c.train.log_every = 1
    c.train.verbose = 0
    c.eval.batch_size = 8
    c.eval.num_images = 8
    c.eval.tb_images = 2
    if task == "classification":
        c.dataset.image_size = 32
    return c


def fixed_coco_as_dataset(make_examples):
    """A `builder._as_dataset` stand-in for `tfds.testing.mock_data(as_dataset_fn=...)` that
    yields `make_examples()` (TFDS `coco/2017` feature dicts) whatever the split."""
    vector = lambda dtype: tf.TensorSpec([None], dtype)  # noqa: E731
    signature = {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "image/filename": tf.TensorSpec([], tf.string),
        "image/id": tf.TensorSpec([], tf.int64),
        "objects": {"id": vector(tf.int64), "area": vector(tf.int64),
                    "bbox": tf.TensorSpec([None, 4], tf.float32), "label": vector(tf.int64),
                    "is_crowd": vector(tf.bool)},
    }

    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_generator(lambda: iter(make_examples()),
                                              output_signature=signature)

    return as_dataset
