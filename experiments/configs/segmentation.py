"""DeepLabV3+ on digit_scenes/detection's masks (11 classes: background + 10 digits).

  python -m rethink_tf.train --config=experiments/configs/segmentation.py --workdir=/tmp/seg
For PASCAL VOC: --config.dataset.name=voc_sbd --config.dataset.train_split=train_aug
  --config.dataset.image_size=512 --config.model.backbone=resnet101

Variants (`--config=experiments/configs/segmentation.py:<variant>`):
  ''        supervised: 4,800 steps of 8 images.
  student   noisy student on human + pseudo masks (255 where unsure), loss normalisation
            (its teacher in the pipeline trains with the same settings, student=False):
  python -m rethink_tf.pseudo_label --config=experiments/configs/segmentation.py:student \
      --teacher=/tmp/teacher_seg --output=/tmp/pseudo_seg
  python -m rethink_tf.train --config=experiments/configs/segmentation.py:student \
      --config.self_training.pseudo_labels=/tmp/pseudo_seg --workdir=/tmp/student_seg
  python -m rethink_tf.pipeline --config=experiments/configs/segmentation.py:student --workdir=DIR
  joint     joint training: the teacher's settings plus 8 digit_scenes/classification images
            per step (see detection.py's `joint`)
  joint_student  the student plus the classification stream:
  python -m rethink_tf.pipeline --joint --config=experiments/configs/segmentation.py:joint_student \
      --workdir=DIR
Self-training settings not set here are base_config's: 1:1 pseudo:human images per batch,
loss normalisation on, alpha 1, unlabeled images from digit_scenes/detection.
What self-training and pre-training give for segmentation, over seeds and with intervals, is
in experiments/paper/REPORT.md (table T8); experiments/bench/SELF_TRAINING.md has the single
runs that chose this recipe.
"""

from rethink_tf.training.config import base_config
from rethink_tf.training.config import joint_training
from rethink_tf.training.config import noisy_student
from rethink_tf.training.config import parse_variant

VARIANTS = {"": "supervised, 4,800 steps",
            "student": "noisy student (and the pipeline's teacher), 1,500 steps",
            "joint": "the student recipe's teacher + joint training with "
                     "digit_scenes/classification (no pseudo labels)",
            "joint_student": "the student + joint training (human + classification + pseudo)"}


def get_config(arg=None):
    variant = parse_variant(arg, VARIANTS, __file__)
    c = base_config("segmentation")
    if variant in ("student", "joint", "joint_student"):
        # The same policy (s2) as its teacher, so the comparison differs only in pseudo labels.
        noisy_student(c, learning_rate=0.08)
        c.self_training.pixel_threshold = 0.5
        if variant == "joint":  # the pipeline teacher's settings: no pseudo labels, no noise
            c.self_training.student = False
            c.model.drop_path_rate = 0.0
        if variant != "student":
            joint_training(c)
        return c
    c.augment = "s1"
    # Sized for 15 minutes on this 2-core CPU (experiments/bench/RESULTS.md): ~130 ms per step
    # of 8 images under load, so 4800 x 8 = 38.4k images (9.6 epochs) plus the final
    # evaluation take ~11.5 min. At equal images batch 4/8/16 learned alike in probes; lr 0.08
    # with 4800 steps gave mIoU 0.27 against 0.18 for lr 0.05 with 3200 steps.
    c.train.steps = 4800
    c.train.batch_size = 8
    c.train.learning_rate = 0.08
    c.train.warmup_steps = 200
    c.train.checkpoint_every = 800
    c.train.eval_every = 0
    return c
