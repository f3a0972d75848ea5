"""Experiment configs: the shared defaults, validation before any work, and the workdir copy.

Config files in `experiments/configs/` call `base_config(task)` and override what differs;
every field can be overridden on the command line (`--config.train.steps=100`). A file may
hold variants: `get_config(arg)` with `--config=file.py:<variant>` (`parse_variant`).
"""

import difflib
import json
import math
import os

import ml_collections

from rethink_tf.data import atomic

TASKS = ("detection", "segmentation", "classification")
POLICIES = ("s1", "s2", "s3", "s4")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
SCHEDULES = ("cosine", "step", "constant")
HFLIP = ("auto", "on", "off")


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
    # TF op determinism: the same command twice (or killed and resumed) gives the same
    # weights and metrics, at some cost in speed (README, "Reproducibility").
    c.deterministic = False

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
    # Horizontal flips in every policy (and SimCLR's views, flip TTA): "auto" asks the source
    # whether a mirror keeps its labels (`sources.hflip_keeps_labels`: not for digit_scenes,
    # whose digits and glyphs a mirror turns into other glyphs); "on" / "off" force it.
    c.dataset.hflip = "auto"

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
    c.train.weight_decay = 4e-5  # the paper's L2 (coupled: in the gradient), not on BN/bias
    c.train.clipnorm = 10.0
    # A step with a non-finite loss or gradient: "stop" the run naming the step and the loss
    # term (the latest checkpoint keeps the last finite weights), or "skip" its update and go
    # on (a bad batch; 20 skipped steps in a row, or non-finite weights, still stop the run).
    c.train.nonfinite = "stop"
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.eval_every = 1000  # 0 = evaluate at the end only
    c.train.log_every = 50
    c.train.mixed_precision = False
    c.train.xla = False
    # Detection: encode anchor targets inside the train "step" or in the input "pipeline"
    # (tf.data, beside the step, as tf-models-official's parser does; same values, and an
    # accelerator's step no longer matches boxes to anchors; experiments/bench/TRAIN_STEP.md).
    c.train.encode_targets = "step"
    c.train.verbose = 1  # 1 = progress bar, 2 = one line per interval

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32
    c.eval.num_images = 0  # 0 = the whole eval split
    c.eval.tb_images = 6  # images with predictions drawn into TensorBoard
    # Detection: a COCO annotation JSON to score against (e.g. the official
    # instances_val2017.json for coco/2017); "" = the source's own (coco_json:'s file, or one
    # written once from the TFDS COCO source), or its canonical examples for other sources.
    c.eval.annotation_file = ""

    c.self_training = ml_collections.ConfigDict()
    # A student trains on human + pseudo labels and needs `pseudo_labels`; student configs set
    # it, so that one run without pseudo labels fails instead of silently training supervised.
    c.self_training.student = False
    c.self_training.pseudo_labels = ""  # the pseudo-label directory a student trains on
    c.self_training.ratio = 1.0  # pseudo:human images per batch (x batch_size: an integer)
    c.self_training.loss_norm = True
    c.self_training.alpha = 1.0
    c.self_training.decay = 0.99  # moving-average decay of the loss normaliser
    c.self_training.average_terms = False  # divide the total by 1 + alpha (loss_norm.py)
    # Used by `python -m rethink_tf.pipeline` (teacher -> pseudo labels -> student):
    c.self_training.unlabeled = "digit_scenes/detection"  # any source name
    c.self_training.unlabeled_split = "unlabeled"
    c.self_training.score_threshold = 0.5  # detection: teacher score for a pseudo box
    c.self_training.pixel_threshold = 0.5  # segmentation: confidence for a pseudo pixel
    c.self_training.flip_tta = False
    c.self_training.teacher_augment = ""  # "" = the student's augment (a fair comparison)
    c.self_training.student_init = "config"  # config (= config.init) | teacher (all weights)

    # Joint training (`rethink_tf.training.joint`): the target task and a classification set
    # at once, on one backbone (plus pseudo labels when self_training.pseudo_labels is set).
    c.joint = ml_collections.ConfigDict()
    c.joint.dataset = ""  # a classification source (e.g. digit_scenes/classification); "" = off
    c.joint.split = "train"
    c.joint.batch_size = 32  # classification images per step, over all replicas
    c.joint.image_size = 0  # 0 = the corpus at dataset.image_size; else its own resolution
    c.joint.augment = "s2"  # the classification stream's policy (AutoAugment)
    c.joint.alpha = 1.0  # alpha_c: the classification loss weight (x avg ratio with loss_norm)
    c.joint.loss_norm = True
    c.joint.label_smoothing = 0.1
    c.joint.dropout = 0.0  # before the classification head's dense layer

    if task == "segmentation":
        c.model.backbone = "resnet_small"
        c.train.learning_rate = 0.05
        c.model.eval_score_threshold = 0.0
    if task == "classification":
        c.dataset.image_size = 64
        c.train.label_smoothing = 0.1
    return c


def parse_variant(arg, known, config_file):
    """The variant named after ':' in `--config=file.py:<variant>`; '' when none is given.

    Args:
        arg: `get_config`'s argument (None without ':', '' for a bare 'file.py:').
        known: {variant name: what it is}, '' being the default.
        config_file: the config's `__file__`, for the message.

    Returns:
        The variant name, one of `known`.

    Raises:
        ValueError: naming the unknown variant and the known ones.
    """
    name = (arg or "").strip()
    if name not in known:
        listed = "; ".join(f"{f'{k!r}' if k else 'none'} ({v})" for k, v in known.items())
        raise ValueError(f"{config_file}: unknown variant {name!r} (from --config=<file>.py:"
                         f"{name}); known variants: {listed}")
    return name


def noisy_student(c, learning_rate):
    """Makes a supervised detection/segmentation config the pipeline's noisy-student recipe.

    The teacher of `python -m rethink_tf.pipeline` trains with these same settings and
    `self_training.student=False` (so the comparison differs only in pseudo labels). The
    budget is per model: the teacher gets the same.

    Args:
        c: a config from `base_config("detection" | "segmentation")`, changed in place.
        learning_rate: the peak learning rate for batch 8.

    Returns:
        `c`.
    """
    # The student is noised: strong augmentation (AutoAugment + scale jitter here, chosen for
    # this CPU's short budget; s4 = RandAugment + large scale jitter as in the paper) on both
    # streams, and stochastic depth.
    c.augment = "s2"
    c.model.drop_path_rate = 0.1
    c.train.steps = 1500  # per model: the teacher gets the same budget
    c.train.batch_size = 8  # human images per step; ratio x as many pseudo images
    c.train.learning_rate = learning_rate
    c.train.warmup_steps = 200
    c.train.checkpoint_every = 500
    c.train.eval_every = 0
    # A student: `python -m rethink_tf.train` needs --config.self_training.pseudo_labels=DIR
    # (the pipeline sets it; its teacher runs with student=False).
    c.self_training.student = True
    c.self_training.unlabeled_split = "unlabeled[:5000]"
    return c


def joint_training(c, dataset="digit_scenes/classification", batch_size=8, image_size=64):
    """Adds joint training with a classification set to a detection/segmentation config.

    The classification stream: `batch_size` images per step of `dataset` at `image_size`
    (its own resolution; 64 px is the pre-training configs' size), AutoAugment (s2) as in
    pre-training, alpha 1 with loss normalisation (the paper's joint-training recipe, scaled
    down). The target task's settings (steps, batch, augmentation) are left as they are.

    Args:
        c: a config from `base_config("detection" | "segmentation")`, changed in place.
        dataset: the classification source (the aligned corpus by default).
        batch_size: classification images per step, over all replicas.
        image_size: the classification images' side.

    Returns:
        `c`.
    """
    c.joint.dataset = dataset
    c.joint.batch_size = batch_size
    c.joint.image_size = image_size
    c.joint.augment = "s2"
    c.joint.alpha = 1.0
    c.joint.loss_norm = True
    return c


def _fail(field, message):
    raise ValueError(f"config.{field}: {message}")


def _get(config, field):
    section, _, key = field.rpartition(".")
    node = config[section] if section else config
    if key not in node:
        _fail(field, "is missing (configs start from rethink_tf.training.config.base_config)")
    return node[key]


def _check_type(field, value, kinds, what):
    # bool is an int in Python; a flag typo like `--config.train.steps=True` must still fail.
    if isinstance(value, bool) and bool not in kinds:
        _fail(field, f"must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        _fail(field, f"must be {what}, got {value!r}")


def _int(config, field, low=None, high=None):
    value = _get(config, field)
    _check_type(field, value, (int,), "an integer")
    _check_range(field, value, low, high, low_open=False)
    return value


def _float(config, field, low=None, high=None, low_open=False, high_open=False):
    value = _get(config, field)
    _check_type(field, value, (int, float), "a number")
    if not math.isfinite(value):  # NaN passes every range check; inf passes ">= 0"
        _fail(field, f"must be finite, got {value}")
    _check_range(field, value, low, high, low_open, high_open)
    return value


def _check_range(field, value, low, high, low_open=False, high_open=False):
    if low is not None and (value <= low if low_open else value < low):
        _fail(field, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(field, f"must be {'<' if high_open else '<='} {high}, got {value}")


def _bool(config, field):
    value = _get(config, field)
    _check_type(field, value, (bool,), "true or false")
    return value


def _choice(config, field, choices):
    value = _get(config, field)
    if value not in choices:
        _fail(field, f"{value!r} is not one of {tuple(choices)}")
    return value


def validate(config):
    """Checks every field of a config before any work starts; raises ValueError naming it.

    Every field is checked whether or not its feature is on (a student's fields in a
    supervised run too), so a typo never waits for the run that uses it. Dataset existence
    and backbone names are checked here too (cheaply: TFDS metadata and the backbone
    registry), so that a typo fails in seconds, not after data loading.
    """
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    from rethink_tf.models import backbones  # pylint: disable=g-import-not-at-top
    _choice(config, "task", TASKS)
    _check_known_fields(config)
    _choice(config, "augment", POLICIES)
    _choice(config, "strategy", STRATEGIES)
    _int(config, "seed", 0)
    if "deterministic" in config:
        _bool(config, "deterministic")
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

    _check_type("dataset.fraction", config.dataset.fraction, (int, float), "a number")
    if not 0.0 < config.dataset.fraction <= 1.0:
        _fail("dataset.fraction", f"{config.dataset.fraction} is not in (0, 1]")
    size = _int(config, "dataset.image_size", 1)
    _int(config, "dataset.max_boxes", 1)
    _int(config, "dataset.shuffle_buffer", 1)
    _bool(config, "dataset.cache")
    if "hflip" in config.dataset:
        _choice(config, "dataset.hflip", HFLIP)

    m = config.model
    if m.backbone not in backbones.BACKBONE_NAMES:
        _fail("model.backbone", f"unknown backbone {m.backbone!r}; known: "
                                f"{', '.join(backbones.BACKBONE_NAMES)}")
    _int(config, "model.num_classes", 0)
    _float(config, "model.drop_path_rate", 0.0, 1.0, high_open=True)
    max_level = _int(config, "model.max_level", 5, 7)
    sizes = tuple(m.anchor_sizes)
    if len(sizes) != max_level - 2 or any(
            isinstance(a, bool) or not isinstance(a, (int, float)) or a <= 0 for a in sizes):
        _fail("model.anchor_sizes", f"needs {max_level - 2} positive sizes (one per level "
                                    f"P3..P{max_level}), got {sizes}")
    for field in ("fpn_filters", "head_filters", "aspp_filters", "projection_filters",
                  "max_detections"):
        _int(config, f"model.{field}", 1)
    _int(config, "model.head_depth", 0)
    _choice(config, "model.head_norm", ("none", "group"))
    _choice(config, "model.box_loss", ("smoothl1", "huber"))
    _float(config, "model.eval_score_threshold", 0.0, 1.0)
    _bool(config, "model.sync_batchnorm")
    if "dropout" in m:
        _float(config, "model.dropout", 0.0, 1.0, high_open=True)
    if config.task == "detection" and size % (2 ** max_level):
        _fail("dataset.image_size", f"{size} must be divisible by 2**model.max_level = "
                                    f"{2 ** max_level}")
    if config.task == "segmentation" and size % 8:
        _fail("dataset.image_size", f"{size} must be divisible by 8 (DeepLabV3+ works at 1/8 "
                                    "and 1/4 of the input)")

    t = config.train
    _int(config, "train.steps", 1)
    _int(config, "train.batch_size", 1)
    _float(config, "train.learning_rate", 0.0, low_open=True)
    _float(config, "train.momentum", 0.0, 1.0, high_open=True)
    _choice(config, "train.schedule", SCHEDULES)
    _int(config, "train.warmup_steps", 0)
    bounds = tuple(t.step_boundaries)
    if any(not 0.0 < b < 1.0 for b in bounds) or list(bounds) != sorted(bounds):
        _fail("train.step_boundaries", f"must be increasing fractions of the steps in (0, 1), "
                                       f"got {bounds}")
    _float(config, "train.step_factor", 0.0, 1.0, low_open=True)
    _float(config, "train.weight_decay", 0.0)
    _float(config, "train.clipnorm", 0.0)
    _int(config, "train.checkpoint_every", 1)
    _int(config, "train.keep_checkpoints", 1)
    _int(config, "train.eval_every", 0)
    _int(config, "train.log_every", 1)
    _bool(config, "train.mixed_precision")
    _bool(config, "train.xla")
    _choice(config, "train.verbose", (0, 1, 2))
    _choice(config, "train.nonfinite", ("stop", "skip"))
    if "encode_targets" in t:
        _choice(config, "train.encode_targets", ("step", "pipeline"))
    if "label_smoothing" in t:
        _float(config, "train.label_smoothing", 0.0, 1.0, high_open=True)

    _int(config, "eval.batch_size", 1)
    _int(config, "eval.num_images", 0)
    _int(config, "eval.tb_images", 0)
    annotation_file = config.eval.get("annotation_file", "")
    if annotation_file and not os.path.isfile(annotation_file):
        _fail("eval.annotation_file", f"{annotation_file!r} is not a file")

    st = config.self_training
    student = _bool(config, "self_training.student") if "student" in st else bool(
        st.pseudo_labels)
    if student and not st.pseudo_labels:
        _fail("self_training.pseudo_labels", "this is a student config (self_training.student "
              "is true) and needs pseudo labels: pass --config.self_training.pseudo_labels=<dir "
              "from `python -m rethink_tf.pseudo_label`>, or --config.self_training.student="
              "false to train supervised")
    if st.pseudo_labels and not student:
        _fail("self_training.student", "is false but self_training.pseudo_labels is set: set "
              "--config.self_training.student=true to train a student on them, or drop them")
    if st.pseudo_labels and not os.path.isdir(st.pseudo_labels):
        _fail("self_training.pseudo_labels", f"{st.pseudo_labels!r} is not a directory")
    ratio = _float(config, "self_training.ratio", 0.0, low_open=True)
    try:
        pipelines.pseudo_batch_size(t.batch_size, ratio)
    except ValueError:
        pseudo_batch = t.batch_size * ratio
        _fail("self_training.ratio", f"{ratio} x train.batch_size {t.batch_size} = "
                                     f"{pseudo_batch:g} pseudo images per batch: must be a "
                                     "whole number")
    _bool(config, "self_training.loss_norm")
    _float(config, "self_training.alpha", 0.0)
    _float(config, "self_training.decay", 0.0, 1.0, high_open=True)
    if "average_terms" in st:
        _bool(config, "self_training.average_terms")
    if not isinstance(st.unlabeled, str) or not st.unlabeled:
        _fail("self_training.unlabeled", f"must name a source, got {st.unlabeled!r}")
    if not isinstance(st.unlabeled_split, str) or not st.unlabeled_split:
        _fail("self_training.unlabeled_split", f"must name a split, got {st.unlabeled_split!r}")
    if st.teacher_augment and st.teacher_augment not in POLICIES:
        _fail("self_training.teacher_augment", f"{st.teacher_augment!r} is not one of {POLICIES}")
    if st.student_init not in ("config", "teacher"):
        _fail("self_training.student_init", f"{st.student_init!r} must be 'config' or 'teacher'")
    for field in ("score_threshold", "pixel_threshold"):
        _float(config, f"self_training.{field}", 0.0, 1.0)
    _bool(config, "self_training.flip_tta")
    unlabeled = _open_source(config, "self_training.unlabeled", st.unlabeled)
    _check_split(config, "self_training.unlabeled_split", unlabeled)
    if st.pseudo_labels:
        _check_pseudo_labels(config)
    if st.flip_tta:
        for name in (config.dataset.name, st.unlabeled):
            if not hflip(config, name):
                _fail("self_training.flip_tta", f"a mirrored image of {name} does not keep its "
                      f"labels (dataset.hflip={config.dataset.get('hflip', 'auto')!r}); "
                      "leave flip_tta False, or set dataset.hflip='on' to flip anyway")
    if "joint" in config:
        _check_joint(config)
    _check_dataset(config)


def hflip(config, name=None):
    """Whether training may flip images of source `name` (default: `dataset.name`).

    `dataset.hflip`: "on" / "off" force it for every stream; "auto" (the default, and configs
    saved before the field existed) is `sources.hflip_keeps_labels(name)`.
    """
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    setting = config.dataset.get("hflip", "auto")
    if setting == "auto":
        return sources.hflip_keeps_labels(name or config.dataset.name)
    return setting == "on"


# Fields some configs add to `base_config`'s (pre-training's head dropout, label smoothing)
# and sections of their own (SimCLR's); anything else unknown is a typo.
OPTIONAL_FIELDS = ("model.dropout", "train.label_smoothing")
OPTIONAL_SECTIONS = ("simclr",)


def _leaves(node, prefix=""):
    """{'section.key': value} of a (nested) config dict's non-dict values."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_known_fields(config):
    """Fails on a field `base_config(config.task)` does not define (a typo such as
    `train.stepz` would otherwise be ignored, and saved into config.json)."""
    known = set(_leaves(base_config(config.task).to_dict())) | set(OPTIONAL_FIELDS)
    for field, value in _leaves(config.to_dict()).items():
        if field in known or field.split(".")[0] in OPTIONAL_SECTIONS:
            continue
        close = difflib.get_close_matches(field, sorted(known), n=1)
        _fail(field, f"unknown field (= {value!r})"
                     + (f"; did you mean {close[0]!r}?" if close else ""))


def is_joint(config):
    """True if `config` trains jointly with a classification set (`joint.dataset` is set)."""
    return bool("joint" in config and config.joint.dataset)


def _check_joint(config):
    j = config.joint
    if not isinstance(j.dataset, str):
        _fail("joint.dataset", f"must name a classification source, got {j.dataset!r}")
    if not isinstance(j.split, str) or not j.split:
        _fail("joint.split", f"must name a split, got {j.split!r}")
    _int(config, "joint.batch_size", 1)  # divides over replicas: checked by joint_dataset
    _int(config, "joint.image_size", 0)
    _choice(config, "joint.augment", POLICIES)
    _float(config, "joint.alpha", 0.0)
    _bool(config, "joint.loss_norm")
    _float(config, "joint.label_smoothing", 0.0, 1.0, high_open=True)
    _float(config, "joint.dropout", 0.0, 1.0, high_open=True)
    if not j.dataset:
        return
    if config.task not in ("detection", "segmentation"):
        _fail("task", f"joint training trains detection or segmentation with a classification "
                      f"set, not {config.task!r}")
    src = _open_source(config, "joint.dataset", j.dataset)
    if "classification" not in src.tasks:
        _fail("joint.dataset", f"{j.dataset} has no classification labels "
                               f"(it has {', '.join(src.tasks) or 'none'})")
    _check_split(config, "joint.split", src)


def _open_source(config, field, name):
    """`sources.info` of the source `config.<field>` names; fails naming the field."""
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    try:
        return sources.info(name, data_dir=config.dataset.data_dir or None)
    except Exception as e:  # noqa: BLE001  (any failure here means the source is unusable)
        _fail(field, f"cannot open {name!r}: {e}")


def _check_split(config, field, src):
    """Fails naming `config.<field>` when its split (slices allowed) is not one of `src`'s."""
    split = _get(config, field)
    base = split.split("[")[0].split("+")[0]
    if src.splits and base not in src.splits:
        _fail(field, f"split {split!r} not in {src.name} (splits: {', '.join(src.splits)})")


def _check_pseudo_labels(config):
    """The pseudo labels a student trains on exist and are of its task and classes."""
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    field, path = "self_training.pseudo_labels", config.self_training.pseudo_labels
    src = _open_source(config, field, sources.PSEUDO_PREFIX + path)
    if config.task not in src.tasks:
        _fail(field, f"{path!r} holds {', '.join(src.tasks)} pseudo labels; this config "
                     f"trains {config.task}")
    dataset = _open_source(config, "dataset.name", config.dataset.name)
    want = dataset.num_classes.get(config.task)
    if want and src.num_classes[config.task] != want:
        _fail(field, f"{path!r} has {src.num_classes[config.task]} {config.task} classes; "
                     f"{config.dataset.name} has {want}")


def _check_dataset(config):
    src = _open_source(config, "dataset.name", config.dataset.name)
    for field in ("train_split", "eval_split"):
        _check_split(config, f"dataset.{field}", src)
    if config.task not in src.tasks:
        _fail("task", f"{config.dataset.name} has no '{config.task}' labels "
                      f"(it has {', '.join(src.tasks)})")


def to_dict(config):
    return json.loads(config.to_json_best_effort())


def save(config, workdir):
    """Writes `workdir/config.json` (the config actually used)."""
    return atomic.write_text(os.path.join(workdir, "config.json"),
                             config.to_json_best_effort(indent=2, sort_keys=True), "config")


# The fields that shape a model's variables: a checkpoint of one value does not restore into
# a model of another.
ARCHITECTURE_FIELDS = ("task", "model.backbone", "model.num_classes", "model.max_level",
                       "model.anchor_sizes", "model.fpn_filters", "model.head_filters",
                       "model.head_depth", "model.head_norm", "model.aspp_filters",
                       "model.projection_filters")


def architecture_difference(config, other):
    """(field, config's value, other's value) of the first architecture field in which two
    configs differ, else None. Fields missing from either (older configs) are not compared."""
    for field in ARCHITECTURE_FIELDS:
        section, _, key = field.rpartition(".")
        nodes = [(c[section] if section else c) if (not section or section in c) else None
                 for c in (config, other)]
        if any(node is None or key not in node for node in nodes):
            continue
        mine, theirs = (node[key] for node in nodes)
        if isinstance(mine, (list, tuple)) or isinstance(theirs, (list, tuple)):
            mine, theirs = tuple(mine), tuple(theirs)
        if mine != theirs:
            return field, mine, theirs
    return None


def require_same_architecture(config, workdir, why):
    """Raises ValueError naming the first architecture field in which `config` differs from
    `workdir/config.json` (both values), ending with `why`."""
    difference = architecture_difference(config, load(workdir))
    if difference:
        field, new, old = difference
        raise ValueError(f"config.{field}: {new!r} differs from {old!r} in "
                         f"{os.path.join(workdir, 'config.json')}; {why}")


def load(workdir):
    """Reads `workdir/config.json` back into a ConfigDict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r} has no config.json: is it a rethink_tf workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
