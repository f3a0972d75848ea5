r"""SimCLR self-supervised pre-training on digit_scenes' classification images, labels unused.

  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_simclr.py \
      --workdir=/tmp/simclr
  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_simclr.py:glyphs \
      --workdir=/tmp/simclr_glyphs
  python -m rethink_tf.train --config=experiments/configs/detection.py \
      --config.init=pretrained:/tmp/simclr --workdir=/tmp/det_simclr

SimCLR learns from `simclr.unlabeled` ("" = `dataset.name`'s train split with its labels
dropped; or e.g. `images:/data/unlabeled/*.jpg`, or `imagenet2012`). `dataset` is the labelled
data of the linear probe (`top1` in metrics.json: softmax regression on frozen, pooled
features of `dataset.train_split`, accuracy on `dataset.eval_split`).

Recipe (SimCLR, scaled to 64 px object-centric images; experiments/bench/SIMCLR.md measures
it): two views per image, each a random resized crop of at least `crop_min_area` = 0.4 of the
image (so both views keep most of the one digit or glyph; SimCLR's 0.08 is for 224 px
ImageNet photos, where a crop still shows part of the object), colour jitter at strength 1.0
(hue 0.2) with p = 0.8 and grayscale with p = 0.2 (the backgrounds are tinted photo crops, so
a weak jitter leaves colour as a shortcut to the positive), no Gaussian blur (at 64 px a
sigma up to 2 erases the strokes), and no horizontal flip (a mirrored digit or letter is
another glyph; keep `flip` False on digit_scenes, True on natural images). A 2-layer
projection head to 64-d, NT-Xent with temperature 0.2, SGD with momentum at
0.3 x batch / 256 (no LARS: Keras has none, and a batch of 256 does not need it; the rate is
set from the batch in `get_config`, so an overridden `train.batch_size` needs its own
`train.learning_rate`), warm-up and cosine, weight decay 1e-4, 2,000 steps (about 26 epochs
of the 20k digits). Negatives are gathered over replicas under
--config.strategy=mirrored/multi_worker/tpu.

Variants (`--config=experiments/configs/pretrain_simclr.py:<variant>`):
  ''      on digit_scenes/classification (10 digit classes, 20k images).
  glyphs  on the glyph corpus digit_scenes/glyphs (62 classes, 50k images); the probe is on
          its validation split.
"""

import ml_collections

from rethink_tf.training.config import base_config
from rethink_tf.training.config import parse_variant

VARIANTS = {"": "SimCLR on digit_scenes/classification: 2,000 steps of 2 x 256 views",
            "glyphs": "SimCLR on digit_scenes/glyphs: 2,000 steps of 2 x 256 views"}
# SGD learning rate per 256 images of batch: SimCLR's LARS rule, which also suits SGD with
# momentum here (0.3 gave a linear probe of 0.556, 0.1 gave 0.483; experiments/bench/SIMCLR.md).
LEARNING_RATE_PER_256 = 0.3


def get_config(arg=None):
    variant = parse_variant(arg, VARIANTS, __file__)
    c = base_config("classification")
    if variant == "glyphs":
        c.dataset.name = "digit_scenes/glyphs"
    c.model.backbone = "resnet_small"
    c.dataset.image_size = 64
    c.train.steps = 2000
    c.train.batch_size = 256  # images; each step runs 2 x 256 views
    c.train.learning_rate = LEARNING_RATE_PER_256 * c.train.batch_size / 256
    c.train.warmup_steps = 100
    c.train.weight_decay = 1e-4
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    c.train.log_every = 100
    c.eval.batch_size = 100

    c.simclr = ml_collections.ConfigDict()
    c.simclr.unlabeled = ""  # "" = dataset.name / dataset.train_split, labels dropped
    c.simclr.unlabeled_split = ""  # "" = 'train' (TFDS) or 'all' (images:, coco_json:)
    c.simclr.temperature = 0.2
    c.simclr.projection_dim = 64
    c.simclr.hidden_dim = 0  # 0 = the backbone's width
    c.simclr.crop_min_area = 0.4
    c.simclr.flip = False  # digits and letters change under a mirror; True for natural images
    c.simclr.color_strength = 1.0
    c.simclr.color_prob = 0.8
    c.simclr.grayscale_prob = 0.2
    c.simclr.blur_prob = 0.0
    c.simclr.probe_epochs = 30
    c.simclr.probe_learning_rate = 0.01
    c.simclr.probe_train_examples = 0  # 0 = the whole train split
    return c
