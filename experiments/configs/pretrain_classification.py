r"""The "ImageNet" checkpoint: supervised classification pre-training on digit_scenes.

  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_classification.py \
      --workdir=/tmp/imagenet
  python -m rethink_tf.train --config=experiments/configs/detection.py \
      --config.init=pretrained:/tmp/imagenet --workdir=/tmp/det_imagenet

`digit_scenes/classification` (64x64 single digits on textures) plays ImageNet: a shortish
run with the standard augmentation (s1: flip + scale jitter + crop), label smoothing 0.1,
warm-up + cosine. The backbone matches detection.py's (resnet_small). For real ImageNet:
--config.dataset.name=imagenet2012 --config.dataset.image_size=224
--config.model.backbone=resnet50 and epochs' worth of steps.
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("classification")
    c.model.backbone = "resnet_small"
    c.dataset.image_size = 64
    c.augment = "s1"
    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.learning_rate = 0.2
    c.train.warmup_steps = 100
    c.train.label_smoothing = 0.1
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    c.train.log_every = 100
    c.eval.batch_size = 100
    return c
