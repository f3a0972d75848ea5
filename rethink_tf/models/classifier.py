"""Image classifier: backbone -> global average pooling -> dropout -> dense logits.

Used for pre-training ("ImageNet init"). The backbone is a sub-model, so
`save_backbone_weights(model.backbone, path)` writes exactly the weights a detector or
segmenter built on the same backbone name can load. The head outputs float32 logits; the
softmax cross-entropy (and any label smoothing) is the trainer's, e.g.
`keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)`.
"""

import keras
import keras_cv

from rethink_tf.models import backbones as backbones_lib


@keras.saving.register_keras_serializable(package="rethink_tf")
class Classifier(keras_cv.models.Task):
    """Backbone + global average pooling + dropout + dense head emitting logits.

    Args:
        backbone: a backbone model (see `build_backbone`).
        num_classes: output classes.
        dropout: dropout rate before the dense layer.
    """

    def __init__(self, backbone, num_classes, dropout=0.0, **kwargs):
        inputs = keras.layers.Input(shape=backbone.input_shape[1:], name="images")
        x = backbone(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "dropout": self.dropout,
                "name": self.name, "trainable": self.trainable}


def build_classifier(backbone_name, num_classes, image_size=None, *, dropout=0.0,
                     backbone_kwargs=None, name="classifier", model_class=None):
    """Builds a `Classifier` on a backbone from `build_backbone`.

    Args:
        backbone_name: a name from `rethink_tf.models.backbones.BACKBONE_NAMES`.
        num_classes: output classes.
        image_size: int, (height, width) or None for any size.
        dropout: dropout rate before the dense head.
        backbone_kwargs: extra arguments for `build_backbone` (e.g. drop_path_rate).
        name: model name.
        model_class: a `Classifier` subclass to instantiate (the self-training student adds
            its train_step this way); None = `Classifier`.

    Returns:
        A `Classifier` whose `backbone` attribute is the backbone sub-model.
    """
    if image_size is None:
        input_shape = (None, None, 3)
    elif isinstance(image_size, int):
        input_shape = (image_size, image_size, 3)
    else:
        input_shape = (int(image_size[0]), int(image_size[1]), 3)
    backbone = backbones_lib.build_backbone(backbone_name, input_shape=input_shape,
                                            **(backbone_kwargs or {}))
    return (model_class or Classifier)(backbone, num_classes, dropout=dropout, name=name)


@keras.saving.register_keras_serializable(package="rethink_tf")
class ClassificationHead(keras.layers.Layer):
    """Global average pooling + dense logits (float32) on a backbone's last level.

    Joint training's head: the backbone it reads is the detector's or segmenter's own, so the
    head alone is extra; it is kept outside the task model (see `training/joint.py`), which
    then restores, exports and serves like a plain one.

    Args:
        num_classes: output classes.
        dropout: dropout rate before the dense layer.
    """

    def __init__(self, num_classes, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.pool = keras.layers.GlobalAveragePooling2D(name="avg_pool")
        self.drop = keras.layers.Dropout(self.dropout, name="head_dropout")
        self.logits = keras.layers.Dense(self.num_classes, dtype="float32", name="logits")

    def build(self, input_shape):
        self.logits.build((input_shape[0], input_shape[-1]))
        super().build(input_shape)

    def call(self, features, training=None):
        return self.logits(self.drop(self.pool(features), training=training))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "dropout": self.dropout}


def build_classification_head(backbone, num_classes, dropout=0.0, name="joint_classifier"):
    """A built `ClassificationHead` for `backbone`'s last level, and the backbone made to
    accept images of any size (classification images keep their own resolution).

    Args:
        backbone: the task model's backbone (`model.backbone`).
        num_classes: classes of the classification set.
        dropout: dropout rate before the dense layer.
        name: the head's name.
    """
    backbones_lib.allow_any_input_size(backbone)
    head = ClassificationHead(num_classes, dropout=dropout, name=name)
    head.build((None, None, None, int(backbone.output_shape[-1])))
    return head
