"""Noisy student for segmentation: DeepLabV3+ on human + pseudo masks (255 where unsure).

  python -m rethink_tf.train --config=experiments/configs/segmentation_student.py \
      --config.self_training.pseudo_labels=/tmp/pseudo_seg --workdir=/tmp/student_seg
  python -m rethink_tf.pipeline --config=experiments/configs/segmentation_student.py --workdir=DIR
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("segmentation")
    c.augment = "s4"
    c.model.drop_path_rate = 0.1
    c.train.steps = 1000
    c.train.batch_size = 16
    c.train.learning_rate = 0.05
    c.train.warmup_steps = 100
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    c.self_training.ratio = 1.0
    c.self_training.loss_norm = True
    c.self_training.alpha = 1.0
    c.self_training.unlabeled = "digit_scenes/detection"
    c.self_training.unlabeled_split = "unlabeled[:5000]"
    c.self_training.pixel_threshold = 0.5
    return c
