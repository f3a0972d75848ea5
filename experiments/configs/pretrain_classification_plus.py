r"""The "ImageNet++" checkpoint: a stronger supervised pre-training than "ImageNet".

  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_classification_plus.py \
      --workdir=/tmp/imagenet_plus

How it is made stronger, in the spirit of the paper's ImageNet++ (EfficientNet-B7 trained
longer with stronger augmentation and Noisy Student): the same backbone and data as
pretrain_classification.py ("ImageNet"), but
  - twice as many steps (3000 vs 1500 at batch 64),
  - strong augmentation: s4 = RandAugment (2 layers, magnitude 10) + scale jitter [0.5, 2.0],
  - dropout 0.2 before the classifier (a head-only noise; the backbone stays loadable by
    detection/segmentation, which build it without dropout).
Once self-training exists, a further step is noisy-student classification on the unlabeled
pool (digit_scenes/detection `unlabeled`); not done here.
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("classification")
    c.model.backbone = "resnet_small"
    c.model.dropout = 0.2
    c.dataset.image_size = 64
    c.augment = "s4"
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.learning_rate = 0.2
    c.train.warmup_steps = 200
    c.train.label_smoothing = 0.1
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    c.train.log_every = 100
    c.eval.batch_size = 100
    return c
