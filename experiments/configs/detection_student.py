"""Noisy student for detection: RetinaNet on human + pseudo labels with loss normalisation.

Stand-alone (pseudo labels made by `python -m rethink_tf.pseudo_label`):
  python -m rethink_tf.train --config=experiments/configs/detection_student.py \
      --config.self_training.pseudo_labels=/tmp/pseudo --workdir=/tmp/student
The whole loop (pre-training -> teacher -> pseudo labels -> student -> report), the
pipeline's default config:
  python -m rethink_tf.pipeline --workdir=DIR
The measured results (experiments/bench/SELF_TRAINING.md) start both from the "ImageNet++"
backbone (the pipeline's default pre-training, or
  --nopretrain --config.init=pretrained:<workdir of pretrain_classification_plus.py>):
with 20 % of the labels (--config.dataset.fraction=0.2) the student beats the teacher on 2
seeds (+0.026, +0.046 AP); with all the labels in 4 of 5 runs (mean +0.020 AP).
(from random initialisation, --nopretrain alone, this budget gives a teacher too weak to
label: AP50 0.30).
Self-training settings not set here are base_config's: 1:1 pseudo:human images per batch,
loss normalisation on, alpha 1, unlabeled images from digit_scenes/detection.
"""

from rethink_tf.training.config import base_config


def get_config():
    c = base_config("detection")
    # The student is noised: strong augmentation (AutoAugment + scale jitter here, chosen for
    # this CPU's short budget; s4 = RandAugment + large scale jitter as in the paper) on both
    # streams, and stochastic depth.
    c.augment = "s2"
    c.model.drop_path_rate = 0.1
    c.train.steps = 1500  # per model: the teacher gets the same budget
    c.train.batch_size = 8  # human images per step; ratio x as many pseudo images
    c.train.learning_rate = 0.04
    c.train.warmup_steps = 200
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    # A student: `python -m rethink_tf.train` needs --config.self_training.pseudo_labels=DIR
    # (the pipeline sets it; its teacher runs with student=False).
    c.self_training.student = True
    c.self_training.unlabeled_split = "unlabeled[:5000]"
    # Chosen by measurement (experiments/bench/SELF_TRAINING.md): with a teacher of AP50 ~0.55,
    # 0.5 keeps 27 % of the objects (precision 0.86) and the student loses; 0.4 keeps 45 %
    # (precision 0.65) and the student wins. Strong teachers (the paper's) suit 0.5.
    c.self_training.score_threshold = 0.4
    return c
