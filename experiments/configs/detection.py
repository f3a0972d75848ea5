"""RetinaNet on digit_scenes/detection: the supervised teacher ("Rand Init" row by default).

  python -m rethink_tf.train --config=experiments/configs/detection.py --workdir=/tmp/det
  python -m rethink_tf.train --config=experiments/configs/detection.py \
      --config.init=pretrained:/tmp/pretrain --config.augment=s4 --workdir=/tmp/det_s4
For COCO: --config.dataset.name=coco/2017 --config.dataset.image_size=640
  --config.model.backbone=resnet50 --config.model.max_level=7 --config.model.anchor_sizes=...
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("detection")
    c.augment = "s1"
    c.train.steps = 3000
    c.train.batch_size = 16
    c.train.learning_rate = 0.08
    c.train.warmup_steps = 200
    c.train.checkpoint_every = 500
    c.train.eval_every = 1500
    return c
