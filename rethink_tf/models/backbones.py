"""Backbone factory: Keras-CV ResNet / EfficientNetV2 and compact ResNets, built without presets.

Every backbone takes float32 images with pixel values in [0, 255] (it rescales internally) and
exposes `pyramid_level_inputs`, a dict from "P2".."P5" (level = log2 of the stride) to layer
names, which the RetinaNet FPN (P3..P5) and DeepLabV3+ (P2, P5) read.

Families (see `BACKBONE_NAMES`):
    resnet18, resnet34, resnet50, resnet101, resnet152:
        `keras_cv.models.ResNetBackbone` (v1) with the standard stackwise arguments.
    efficientnetv2_b0 .. efficientnetv2_b3, efficientnetv2_s:
        `keras_cv.models.EfficientNetV2Backbone` with the block arguments of the paper
        (those of `keras.applications`); `drop_path_rate` is its stochastic depth.
    resnet_tiny, resnet_small:
        `CompactResNetBackbone`, a narrow basic-block ResNet (3x3 stem) for tests and for
        training in minutes on a CPU; `drop_path_rate` adds stochastic depth.

Backbone weights travel on their own (`save_backbone_weights` / `load_backbone_weights`), so a
classifier pre-trained by `rethink_tf.pretrain` initialises a detector or a segmenter.
"""

import json
import os

import keras
import keras_cv
from keras import ops

from rethink_tf.data import atomic

# Name of the attribute that records which factory name built a backbone.
_NAME_ATTR = "rethink_backbone_name"

_RESNET_V1 = {
    "resnet18": dict(stackwise_blocks=[2, 2, 2, 2], block_type="basic_block"),
    "resnet34": dict(stackwise_blocks=[3, 4, 6, 3], block_type="basic_block"),
    "resnet50": dict(stackwise_blocks=[3, 4, 6, 3], block_type="block"),
    "resnet101": dict(stackwise_blocks=[3, 4, 23, 3], block_type="block"),
    "resnet152": dict(stackwise_blocks=[3, 8, 36, 3], block_type="block"),
}

# Per stage: (kernel, repeats, input filters, output filters, expansion, se ratio, stride, type);
# the values of keras.applications.efficientnet_v2.DEFAULT_BLOCKS_ARGS.
_EFFNETV2_B_BLOCKS = [
    (3, 1, 32, 16, 1, 0.0, 1, "fused"),
    (3, 2, 16, 32, 4, 0.0, 2, "fused"),
    (3, 2, 32, 48, 4, 0.0, 2, "fused"),
    (3, 3, 48, 96, 4, 0.25, 2, "unfused"),
    (3, 5, 96, 112, 6, 0.25, 1, "unfused"),
    (3, 8, 112, 192, 6, 0.25, 2, "unfused"),
]
_EFFNETV2_S_BLOCKS = [
    (3, 2, 24, 24, 1, 0.0, 1, "fused"),
    (3, 4, 24, 48, 4, 0.0, 2, "fused"),
    (3, 4, 48, 64, 4, 0.0, 2, "fused"),
    (3, 6, 64, 128, 4, 0.25, 2, "unfused"),
    (3, 9, 128, 160, 6, 0.25, 1, "unfused"),
    (3, 15, 160, 256, 6, 0.25, 2, "unfused"),
]
# name -> (blocks, width coefficient, depth coefficient)
_EFFNETV2 = {
    "efficientnetv2_b0": (_EFFNETV2_B_BLOCKS, 1.0, 1.0),
    "efficientnetv2_b1": (_EFFNETV2_B_BLOCKS, 1.0, 1.1),
    "efficientnetv2_b2": (_EFFNETV2_B_BLOCKS, 1.1, 1.2),
    "efficientnetv2_b3": (_EFFNETV2_B_BLOCKS, 1.2, 1.4),
    "efficientnetv2_s": (_EFFNETV2_S_BLOCKS, 1.0, 1.0),
}

_COMPACT = {
    # ~6.5k parameters: for tests only.
    "resnet_tiny": dict(stem_filters=4, stackwise_filters=[4, 8, 8, 16],
                        stackwise_blocks=[1, 1, 1, 1]),
    # ~0.38M parameters: trains in minutes on a 2-core CPU at 64..128 px.
    "resnet_small": dict(stem_filters=16, stackwise_filters=[16, 32, 64, 128],
                         stackwise_blocks=[1, 1, 2, 1]),
}

BACKBONE_NAMES = tuple(sorted([*_RESNET_V1, *_EFFNETV2, *_COMPACT]))


@keras.saving.register_keras_serializable(package="rethink_tf")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per example while training.

    Args:
        rate: probability of dropping the branch.
        seed: optional int seed.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        return inputs * ops.floor(keep + noise) / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _basic_block(x, filters, stride, drop_path_rate, name):
    """A v1 basic residual block (two 3x3 convs); projection shortcut when the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                       name=f"{name}_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                   name=f"{name}_0_bn")(shortcut)
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            name=f"{name}_1_conv")(x)
    y = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_2_bn")(y)
    if drop_path_rate > 0.0:
        y = DropPath(drop_path_rate, name=f"{name}_drop_path")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="rethink_tf")
class CompactResNetBackbone(keras_cv.models.Backbone):
    """A narrow ResNet-v1 of basic blocks with a 3x3 stem, for small images and small CPUs.

    Layout: rescale 1/255 -> 3x3/2 conv -> 3x3/2 max-pool (stride 4) -> one stage per entry of
    `stackwise_filters` with strides 1, 2, 2, 2 -> P2..P5. Batch-norm momentum is 0.9 (not 0.99)
    because runs are short and the moving statistics must catch up within them.

    Args:
        stem_filters: filters of the stem convolution.
        stackwise_filters: filters per stage (4 stages).
        stackwise_blocks: basic blocks per stage.
        drop_path_rate: stochastic depth; block i of n drops with rate * i / n.
        include_rescaling: divide the 0..255 input by 255.
        input_shape: image shape without the batch dimension.
    """

    def __init__(self, *, stem_filters, stackwise_filters, stackwise_blocks,
                 drop_path_rate=0.0, include_rescaling=True, input_shape=(None, None, 3),
                 **kwargs):
        if len(stackwise_filters) != 4 or len(stackwise_blocks) != 4:
            raise ValueError("CompactResNetBackbone needs 4 stages (P2..P5); got "
                             f"stackwise_filters={stackwise_filters}, "
                             f"stackwise_blocks={stackwise_blocks}")
        inputs = keras.layers.Input(shape=tuple(input_shape), name="images")
        x = inputs
        if include_rescaling:
            x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        x = keras.layers.Conv2D(stem_filters, 3, strides=2, padding="same", use_bias=False,
                                name="stem_conv")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="stem_bn")(x)
        x = keras.layers.Activation("relu", name="stem_relu")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        total_blocks = sum(stackwise_blocks)
        block_index = 0
        pyramid_level_inputs = {}
        for stage, (filters, blocks) in enumerate(zip(stackwise_filters, stackwise_blocks)):
            for block in range(blocks):
                stride = 2 if (stage > 0 and block == 0) else 1
                rate = drop_path_rate * block_index / max(total_blocks, 1)
                x = _basic_block(x, filters, stride, rate, name=f"stage{stage}_block{block}")
                block_index += 1
            pyramid_level_inputs[f"P{stage + 2}"] = f"stage{stage}_block{blocks - 1}_out"
        super().__init__(inputs=inputs, outputs=x, **kwargs)
        self.pyramid_level_inputs = pyramid_level_inputs
        self.stem_filters = stem_filters
        self.stackwise_filters = list(stackwise_filters)
        self.stackwise_blocks = list(stackwise_blocks)
        self.drop_path_rate = drop_path_rate
        self.include_rescaling = include_rescaling

    def get_config(self):
        config = super().get_config()
        config.update({
            "stem_filters": self.stem_filters,
            "stackwise_filters": self.stackwise_filters,
            "stackwise_blocks": self.stackwise_blocks,
            "drop_path_rate": self.drop_path_rate,
            "include_rescaling": self.include_rescaling,
            "input_shape": self.input_shape[1:],
        })
        return config


def build_backbone(name, input_shape=(None, None, 3), *, drop_path_rate=0.0,
                   include_rescaling=True, **kwargs):
    """Builds a backbone by name, with random weights (no preset is ever downloaded).

    Args:
        name: one of `BACKBONE_NAMES`.
        input_shape: image shape without batch dimension; (None, None, 3) for any size.
        drop_path_rate: stochastic depth rate for the families that have it (EfficientNetV2's
            `skip_connection_dropout`, the compact ResNets); the Keras-CV ResNet has none, so a
            non-zero rate raises there.
        include_rescaling: rescale 0..255 inputs to 0..1 inside the model.
        **kwargs: architecture overrides passed to the constructor (for example
            `stackwise_filters=[8, 16, 32, 64]` for a compact ResNet).

    Returns:
        A `keras_cv.models.Backbone` with `pyramid_level_inputs` and an attribute
        `rethink_backbone_name` recording `name`.

    Raises:
        ValueError: for an unknown name or an option the family does not have.
    """
    if name in _RESNET_V1:
        if drop_path_rate:
            raise ValueError(f"backbone '{name}': the Keras-CV ResNet has no stochastic depth; "
                             "use drop_path_rate=0 or an efficientnetv2_*/resnet_tiny/"
                             "resnet_small backbone")
        args = dict(stackwise_filters=[64, 128, 256, 512], stackwise_strides=[1, 2, 2, 2],
                    **_RESNET_V1[name])
        args.update(kwargs)
        backbone = keras_cv.models.ResNetBackbone(include_rescaling=include_rescaling,
                                                  input_shape=tuple(input_shape), **args)
    elif name in _EFFNETV2:
        blocks, width, depth = _EFFNETV2[name]
        columns = list(zip(*blocks))
        args = dict(
            width_coefficient=width, depth_coefficient=depth,
            stackwise_kernel_sizes=list(columns[0]), stackwise_num_repeats=list(columns[1]),
            stackwise_input_filters=list(columns[2]), stackwise_output_filters=list(columns[3]),
            stackwise_expansion_ratios=list(columns[4]),
            stackwise_squeeze_and_excite_ratios=list(columns[5]),
            stackwise_strides=list(columns[6]), stackwise_conv_types=list(columns[7]),
            skip_connection_dropout=drop_path_rate)
        args.update(kwargs)
        backbone = keras_cv.models.EfficientNetV2Backbone(
            include_rescaling=include_rescaling, input_shape=tuple(input_shape), **args)
    elif name in _COMPACT:
        args = dict(_COMPACT[name])
        args.update(kwargs)
        backbone = CompactResNetBackbone(drop_path_rate=drop_path_rate,
                                         include_rescaling=include_rescaling,
                                         input_shape=tuple(input_shape), **args)
    else:
        raise ValueError(f"unknown backbone '{name}'; valid names: {', '.join(BACKBONE_NAMES)}")
    setattr(backbone, _NAME_ATTR, name)
    return backbone


def allow_any_input_size(backbone):
    """Lets a backbone built for one image size run on images of any size (it is
    convolutions and batch norm only), e.g. a detector's 128 px backbone on 32 px
    classification images in joint training. The detector's own graph is unchanged.

    Returns:
      The backbone.
    """
    # A functional model checks calls against its Input's full shape; keep rank and channels.
    backbone.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: 3})
    return backbone


def backbone_name(backbone):
    """The factory name that built `backbone` (its class name if it was built otherwise)."""
    return getattr(backbone, _NAME_ATTR, type(backbone).__name__)


def set_synchronized_batchnorm(model, synchronized=True):
    """Makes every BatchNormalization layer in `model` (nested ones too) sync across replicas.

    Keras reads the flag at call time, so this works on an already-built model; call it before
    the first traced train step.

    Args:
        model: a Keras model or layer.
        synchronized: the value to set.

    Returns:
        The number of BatchNormalization layers changed.
    """
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
            count += 1
    return count


_BY_PATH = "variables_by_path"


def _metadata_path(weights_path):
    return weights_path[: -len(".weights.h5")] + ".backbone.json"


def _variable_specs(backbone):
    return [(v.path, [int(d) for d in v.shape]) for v in backbone.weights]


def save_backbone_weights(backbone, path):
    """Saves only the backbone's weights, plus a JSON describing its architecture.

    Args:
        backbone: a backbone from `build_backbone` (or `model.backbone` of a task model; it
            shares its variables with the task model).
        path: file name ending in `.weights.h5`; the JSON goes next to it as
            `<stem>.backbone.json`.

    Returns:
        The path of the JSON metadata file.
    """
    if not path.endswith(".weights.h5"):
        raise ValueError(f"backbone weights path must end in '.weights.h5', got '{path}'")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    import h5py  # pylint: disable=g-import-not-at-top
    # Keyed by variable path (not Keras's creation-order layer names), so a backbone built
    # with extra weightless layers (stochastic depth) loads the same file.
    with atomic.replacing(path, "backbone weights") as tmp:
        with h5py.File(tmp, "w") as f:
            for variable in backbone.weights:
                f.create_dataset(f"{_BY_PATH}/{variable.path}", data=variable.numpy())
    meta = {"backbone": backbone_name(backbone), "class": type(backbone).__name__,
            "variables": _variable_specs(backbone)}
    meta_path = _metadata_path(path)
    atomic.write_json(meta_path, meta, "backbone metadata", indent=1)
    return meta_path


def load_backbone_weights(backbone, path):
    """Loads weights written by `save_backbone_weights` into `backbone`, in place.

    The architectures are compared variable by variable (by path and shape) before anything is
    loaded, so a mismatch leaves `backbone` untouched.

    Args:
        backbone: the backbone to fill (for a task model pass `model.backbone`).
        path: the `.weights.h5` file.

    Raises:
        FileNotFoundError: if the weights or the metadata JSON are missing.
        ValueError: if the saved architecture differs; the message names both architectures
            and the first mismatching variable.
    """
    meta_path = _metadata_path(path) if path.endswith(".weights.h5") else None
    if meta_path is None or not os.path.exists(path) or not os.path.exists(meta_path):
        raise FileNotFoundError(f"backbone weights '{path}' or their metadata '{meta_path}' "
                                "not found (write them with save_backbone_weights)")
    with open(meta_path) as f:
        meta = json.load(f)
    saved = {name: list(shape) for name, shape in meta["variables"]}
    target = {name: list(shape) for name, shape in _variable_specs(backbone)}
    names = f"saved '{meta['backbone']}' vs target '{backbone_name(backbone)}'"
    # Compared by variable path, not position: stochastic depth adds layers (without weights)
    # that change the functional graph's layer order but not the architecture.
    for name, shape in target.items():
        if name not in saved:
            raise ValueError(f"backbone architecture mismatch ({names}): target variable "
                             f"'{name}' {tuple(shape)} is not in the saved weights")
        if saved[name] != shape:
            raise ValueError(f"backbone architecture mismatch ({names}): variable '{name}' "
                             f"saved {tuple(saved[name])} vs target {tuple(shape)}")
    extra = sorted(set(saved) - set(target))
    if extra:
        raise ValueError(f"backbone architecture mismatch ({names}): {len(saved)} saved "
                         f"variables vs {len(target)} in the target; first unmatched: "
                         f"'{extra[0]}'")
    _load_by_layer_name(backbone, path)


def _load_by_layer_name(backbone, path):
    """Assigns each variable from the dataset named by its path (see save_backbone_weights).

    Files written by Keras's own `save_weights` (an earlier format) are loaded with it.
    """
    import h5py  # pylint: disable=g-import-not-at-top
    with h5py.File(path, "r") as f:
        if _BY_PATH not in f:
            legacy = True
        else:
            legacy = False
            values = [(v, f[f"{_BY_PATH}/{v.path}"][()]) for v in backbone.weights]
    if legacy:
        backbone.load_weights(path)
        return
    for variable, value in values:
        variable.assign(value)
