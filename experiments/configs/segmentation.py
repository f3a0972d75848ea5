"""DeepLabV3+ on digit_scenes/detection's masks (11 classes: background + 10 digits).

  python -m rethink_tf.train --config=experiments/configs/segmentation.py --workdir=/tmp/seg
For PASCAL VOC: --config.dataset.name=voc_sbd --config.dataset.train_split=train_aug
  --config.dataset.image_size=512 --config.model.backbone=resnet101
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("segmentation")
    c.augment = "s1"
    c.train.steps = 2000
    c.train.batch_size = 16
    c.train.learning_rate = 0.05
    c.train.warmup_steps = 100
    c.train.checkpoint_every = 500
    c.train.eval_every = 1000
    return c
