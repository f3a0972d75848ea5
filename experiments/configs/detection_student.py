"""Noisy student for detection: RetinaNet on human + pseudo labels with loss normalisation.

Stand-alone (pseudo labels made by `python -m rethink_tf.pseudo_label`):
  python -m rethink_tf.train --config=experiments/configs/detection_student.py \
      --config.self_training.pseudo_labels=/tmp/pseudo --workdir=/tmp/student
The whole loop (teacher -> pseudo labels -> student -> report) with these settings:
  python -m rethink_tf.pipeline --config=experiments/configs/detection_student.py --workdir=DIR
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("detection")
    c.augment = "s4"  # the student is noised: strong augmentation on both streams
    c.model.drop_path_rate = 0.1  # and stochastic depth
    c.train.steps = 1200
    c.train.batch_size = 16  # human images per step; ratio x as many pseudo images
    c.train.learning_rate = 0.08
    c.train.warmup_steps = 150
    c.train.checkpoint_every = 400
    c.train.eval_every = 0
    c.self_training.ratio = 1.0
    c.self_training.loss_norm = True
    c.self_training.alpha = 1.0
    c.self_training.unlabeled = "digit_scenes/detection"
    c.self_training.unlabeled_split = "unlabeled[:5000]"
    c.self_training.score_threshold = 0.5
    return c
