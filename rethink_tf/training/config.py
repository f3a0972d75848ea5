"""Experiment configs: the shared defaults, validation before any work, and the workdir copy.

Config files in `experiments/configs/` call `base_config(task)` and override what differs;
every field can be overridden on the command line (`--config.train.steps=100`).
"""

import json
import os

import ml_collections

TASKS = ("detection", "segmentation", "classification")
POLICIES = ("s1", "s2", "s3", "s4")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
SCHEDULES = ("cosine", "step", "constant")


def base_config(task="detection"):
    """Defaults shared by every run: the paper's recipe, scaled to the built-in benchmark."""
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.augment = "s1"
    # random | pretrained:<pretrain workdir> | checkpoint:<path to backbone weights>
    # | teacher:<training workdir> (all weights of that run's best checkpoint)
    c.init = "random"
    c.strategy = "default"
    c.tpu = ""  # TPU address for strategy=tpu ("" = local / Cloud TPU VM)

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = f"digit_scenes/{'detection' if task != 'classification' else task}"
    c.dataset.data_dir = ""  # "" = TFDS's default
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.fraction = 1.0  # labelled fraction (0, 1]: the paper's 20/50/100 %
    c.dataset.image_size = 128
    c.dataset.max_boxes = 100
    c.dataset.cache = True  # cache decoded examples in memory (small datasets)
    c.dataset.shuffle_buffer = 2048

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "resnet_small"
    c.model.num_classes = 0  # 0 = read from the dataset's metadata
    c.model.drop_path_rate = 0.0  # stochastic depth (students are noised with it)
    c.model.max_level = 5
    c.model.anchor_sizes = (16.0, 32.0, 64.0)
    c.model.fpn_filters = 64
    c.model.head_filters = 64
    c.model.head_depth = 2
    c.model.head_norm = "none"  # none | group: normalised class/box subnets (detection)
    c.model.aspp_filters = 64  # segmentation: ASPP width (256 in the paper)
    c.model.projection_filters = 32  # segmentation: projected low-level (P2) features
    c.model.box_loss = "smoothl1"
    c.model.eval_score_threshold = 0.05  # COCO evaluation wants the low-score tail
    c.model.max_detections = 100
    c.model.sync_batchnorm = True  # synchronise BN statistics across replicas

    c.train = ml_collections.ConfigDict()
    c.train.steps = 3000
    c.train.batch_size = 16  # global, over all replicas
    c.train.learning_rate = 0.08  # peak, for the global batch
    c.train.momentum = 0.9
    c.train.schedule = "cosine"
    c.train.warmup_steps = 200
    c.train.step_boundaries = (0.67, 0.89)  # fractions of steps, for schedule=step
    c.train.step_factor = 0.1
    c.train.weight_decay = 4e-5  # L2 (decoupled in the SGD update), not on BN/bias
    c.train.clipnorm = 10.0
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.eval_every = 1000  # 0 = evaluate at the end only
    c.train.log_every = 50
    c.train.mixed_precision = False
    c.train.xla = False
    c.train.verbose = 1  # 1 = progress bar, 2 = one line per interval

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32
    c.eval.num_images = 0  # 0 = the whole eval split
    c.eval.tb_images = 6  # images with predictions drawn into TensorBoard

    c.self_training = ml_collections.ConfigDict()
    c.self_training.pseudo_labels = ""  # a pseudo-label directory turns on the student
    c.self_training.ratio = 1.0  # pseudo:human images per batch
    c.self_training.loss_norm = True
    c.self_training.alpha = 1.0
    c.self_training.decay = 0.99  # moving-average decay of the loss normaliser
    # Used by `python -m rethink_tf.pipeline` (teacher -> pseudo labels -> student):
    c.self_training.unlabeled = "digit_scenes/detection"  # any source name
    c.self_training.unlabeled_split = "unlabeled"
    c.self_training.score_threshold = 0.5  # detection: teacher score for a pseudo box
    c.self_training.pixel_threshold = 0.5  # segmentation: confidence for a pseudo pixel
    c.self_training.flip_tta = False
    c.self_training.teacher_augment = ""  # "" = the student's augment (a fair comparison)
    c.self_training.student_init = "config"  # config (= config.init) | teacher (all weights)

    if task == "segmentation":
        c.model.backbone = "resnet_small"
        c.train.learning_rate = 0.05
        c.model.eval_score_threshold = 0.0
    if task == "classification":
        c.dataset.image_size = 64
        c.train.label_smoothing = 0.1
    return c


def _fail(field, message):
    raise ValueError(f"config.{field}: {message}")


def validate(config):
    """Checks a config before any work starts; raises ValueError naming the bad field.

    Dataset existence and backbone names are checked here too (cheaply: TFDS metadata and
    the backbone registry), so that a typo fails in seconds, not after data loading.
    """
    from rethink_tf.models import backbones  # pylint: disable=g-import-not-at-top
    if config.task not in TASKS:
        _fail("task", f"{config.task!r} is not one of {TASKS}")
    if config.augment not in POLICIES:
        _fail("augment", f"{config.augment!r} is not one of {POLICIES}")
    if config.strategy not in STRATEGIES:
        _fail("strategy", f"{config.strategy!r} is not one of {STRATEGIES}")
    init = config.init
    if not (init == "random" or init.split(":", 1)[0] in ("pretrained", "checkpoint", "teacher")
            and ":" in init):
        _fail("init", f"{init!r} must be 'random', 'pretrained:<workdir>', "
                      "'checkpoint:<backbone .weights.h5>' or 'teacher:<workdir>'")
    if init != "random":
        path = init.split(":", 1)[1]
        if not path:
            _fail("init", f"{init!r} names no path")
        if not os.path.exists(path) and not os.path.exists(path + ".weights.h5"):
            _fail("init", f"{path!r} does not exist")
    fraction = config.dataset.fraction
    if not 0.0 < fraction <= 1.0:
        _fail("dataset.fraction", f"{fraction} is not in (0, 1]")
    if config.model.backbone not in backbones.BACKBONE_NAMES:
        _fail("model.backbone", f"unknown backbone {config.model.backbone!r}; known: "
                                f"{', '.join(backbones.BACKBONE_NAMES)}")
    if config.train.schedule not in SCHEDULES:
        _fail("train.schedule", f"{config.train.schedule!r} is not one of {SCHEDULES}")
    for field in ("steps", "batch_size"):
        if config.train[field] <= 0:
            _fail(f"train.{field}", f"must be > 0, got {config.train[field]}")
    if config.train.learning_rate <= 0:
        _fail("train.learning_rate", f"must be > 0, got {config.train.learning_rate}")
    if config.train.checkpoint_every <= 0:
        _fail("train.checkpoint_every", "must be > 0")
    size = config.dataset.image_size
    if config.task == "detection" and size % (2 ** config.model.max_level):
        _fail("dataset.image_size", f"{size} must be divisible by 2**model.max_level = "
                                    f"{2 ** config.model.max_level}")
    st = config.self_training
    if st.pseudo_labels:
        if not os.path.isdir(st.pseudo_labels):
            _fail("self_training.pseudo_labels", f"{st.pseudo_labels!r} is not a directory")
        if st.ratio <= 0:
            _fail("self_training.ratio", f"must be > 0, got {st.ratio}")
        if st.alpha < 0:
            _fail("self_training.alpha", f"must be >= 0, got {st.alpha}")
        if not 0.0 <= st.decay < 1.0:
            _fail("self_training.decay", f"must be in [0, 1), got {st.decay}")
    if st.teacher_augment and st.teacher_augment not in POLICIES:
        _fail("self_training.teacher_augment", f"{st.teacher_augment!r} is not one of {POLICIES}")
    if st.student_init not in ("config", "teacher"):
        _fail("self_training.student_init", f"{st.student_init!r} must be 'config' or 'teacher'")
    for field in ("score_threshold", "pixel_threshold"):
        if not 0.0 <= st[field] <= 1.0:
            _fail(f"self_training.{field}", f"must be in [0, 1], got {st[field]}")
    _check_dataset(config)


def _check_dataset(config):
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    try:
        src = sources.info(config.dataset.name, data_dir=config.dataset.data_dir or None)
    except Exception as e:  # noqa: BLE001  (any failure here means the dataset is unusable)
        _fail("dataset.name", f"cannot open {config.dataset.name!r}: {e}")
    for field in ("train_split", "eval_split"):
        split = config.dataset[field]
        base = split.split("[")[0].split("+")[0]
        if src.splits and base not in src.splits:
            _fail(f"dataset.{field}", f"split {split!r} not in {config.dataset.name} "
                                      f"(splits: {', '.join(src.splits)})")
    if config.task not in src.tasks:
        _fail("task", f"{config.dataset.name} has no '{config.task}' labels "
                      f"(it has {', '.join(src.tasks)})")


def to_dict(config):
    return json.loads(config.to_json_best_effort())


def save(config, workdir):
    """Writes `workdir/config.json` (the config actually used)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load(workdir):
    """Reads `workdir/config.json` back into a ConfigDict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r} has no config.json: is it a rethink_tf workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
