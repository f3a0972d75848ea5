r"""SimCLR self-supervised pre-training on digit_scenes' classification images, labels unused.

  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_simclr.py \
      --workdir=/tmp/simclr
  python -m rethink_tf.train --config=experiments/configs/detection.py \
      --config.init=pretrained:/tmp/simclr --workdir=/tmp/det_simclr

SimCLR learns from `simclr.unlabeled` ("" = `dataset.name`'s train split with its labels
dropped; or e.g. `images:/data/unlabeled/*.jpg`, or `imagenet2012`). `dataset` is the labelled
data of the linear probe (`top1` in metrics.json: softmax regression on frozen, pooled
features of `dataset.train_split`, accuracy on `dataset.eval_split`).

Recipe (SimCLR v2, scaled down): two views per image (random resized crop with area >= 0.2
since the images are small, flip, colour jitter s = 0.5 with p = 0.8, grayscale p = 0.2,
blur p = 0.5), a 2-layer projection head to 64-d, NT-Xent with temperature 0.2, SGD with
momentum + warm-up + cosine (no LARS: Keras has none and batch 128 does not need it).
Negatives are gathered over replicas under --config.strategy=mirrored/multi_worker/tpu.
"""

import ml_collections

from rethink_tf.training.config import base_config
from rethink_tf.training.config import parse_variant

VARIANTS = {"": "SimCLR v2, scaled down: 800 steps of 2 x 128 views"}


def get_config(arg=None):
    parse_variant(arg, VARIANTS, __file__)
    c = base_config("classification")
    c.model.backbone = "resnet_small"
    c.dataset.image_size = 64
    c.train.steps = 800
    c.train.batch_size = 128  # images; each step runs 2 x 128 views
    c.train.learning_rate = 0.3
    c.train.warmup_steps = 100
    c.train.weight_decay = 1e-5
    c.train.checkpoint_every = 200
    c.train.eval_every = 0
    c.train.log_every = 50
    c.eval.batch_size = 100

    c.simclr = ml_collections.ConfigDict()
    c.simclr.unlabeled = ""  # "" = dataset.name / dataset.train_split, labels dropped
    c.simclr.unlabeled_split = ""  # "" = 'train' (TFDS) or 'all' (images:, coco_json:)
    c.simclr.temperature = 0.2
    c.simclr.projection_dim = 64
    c.simclr.hidden_dim = 0  # 0 = the backbone's width
    c.simclr.crop_min_area = 0.2
    c.simclr.flip = True
    c.simclr.color_strength = 0.5
    c.simclr.color_prob = 0.8
    c.simclr.grayscale_prob = 0.2
    c.simclr.blur_prob = 0.5
    c.simclr.probe_epochs = 30
    c.simclr.probe_learning_rate = 0.01
    c.simclr.probe_train_examples = 0  # 0 = the whole train split
    return c
