"""Helpers shared by the config files here (not a config: the leading `_` says so).

Config files are loaded by path (ml_collections' `config_flags` runs `get_config(arg)` of the
file named by `--config=path.py:arg`), not imported as a package, so they load this file by
path too:

    def _common():
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_common.py")
        spec = importlib.util.spec_from_file_location("rethink_configs_common", path)
        ...
"""


def variant(arg, known, config_file):
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
