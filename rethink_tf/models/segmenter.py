"""DeepLabV3+ segmenter (Keras-CV) that outputs logits, plus its ignore-aware loss.

Batch format: inputs `images` float32 [B, H, W, 3] in 0..255; targets `segmentation_masks`
int32 [B, H, W, 1] with 255 = ignore. The model outputs float32 logits [B, H, W, num_classes]
at the input resolution (Keras-CV's default head ends in a softmax, which the masked
cross-entropy must not see, so the head here is rebuilt without it).

    model = build_segmenter("resnet_small", num_classes=11, image_size=128)
    model.compile(optimizer=..., loss=MaskedSparseCategoricalCrossentropy(ignore_label=255))
"""

import keras
import keras_cv

from rethink_tf.models import backbones as backbones_lib
from rethink_tf.models import tracking
from rethink_tf.models.losses import IGNORE_LABEL
from rethink_tf.models.losses import MaskedSparseCategoricalCrossentropy  # noqa: F401 (API)
from rethink_tf.models.losses import masked_sparse_categorical_crossentropy

# The segmenter's model class: subclass it to change the train step (the self-training
# student does), so that only models/ names Keras-CV.
Segmenter = keras_cv.models.DeepLabV3Plus


def _segmentation_head(num_classes, filters):
    # Keras-CV's head with a logits output: 1x1 conv + BN + ReLU, x4 upsampling, 1x1 classifier.
    return keras.Sequential([
        keras.layers.Conv2D(filters, 1, padding="same", use_bias=False,
                            name="segmentation_head_conv"),
        keras.layers.BatchNormalization(name="segmentation_head_norm"),
        keras.layers.ReLU(name="segmentation_head_relu"),
        keras.layers.UpSampling2D(size=(4, 4), interpolation="bilinear"),
        keras.layers.Conv2D(num_classes, 1, padding="same", dtype="float32",
                            name="segmentation_output"),
    ], name="segmentation_head")


def build_segmenter(backbone_name, num_classes, image_size=None, *, backbone_kwargs=None,
                    aspp_filters=256, aspp_dilation_rates=(6, 12, 18), aspp_dropout=0.0,
                    projection_filters=48, head_filters=256, name="deeplab_v3_plus",
                    model_class=None):
    """Builds a Keras-CV `DeepLabV3Plus` emitting logits at the input resolution.

    The backbone's P2 (stride 4) feeds the decoder and P5 (stride 32) the ASPP, so image sides
    must be multiples of 32.

    Args:
        backbone_name: a name from `rethink_tf.models.backbones.BACKBONE_NAMES`.
        num_classes: classes including background; labels are 0..num_classes-1 and 255.
        image_size: int, (height, width) or None for any multiple of 32.
        backbone_kwargs: extra arguments for `build_backbone`.
        aspp_filters: ASPP channels (256 in the paper).
        aspp_dilation_rates: ASPP atrous rates.
        aspp_dropout: dropout after the ASPP projection.
        projection_filters: channels of the projected low-level (P2) features.
        head_filters: channels of the decoder convolution.
        name: model name.
        model_class: a subclass of `Segmenter` (Keras-CV's `DeepLabV3Plus`) to instantiate
            (e.g. the self-training student's); default `Segmenter`.

    Returns:
        A `keras_cv.models.DeepLabV3Plus`; `model.backbone` is its backbone sub-model.
    """
    if image_size is None:
        input_shape = (None, None, 3)
    else:
        height, width = ((image_size, image_size) if isinstance(image_size, int)
                         else tuple(int(v) for v in image_size))
        if height % 32 or width % 32:
            raise ValueError(f"segmenter image_size {(height, width)} must be a multiple of 32")
        input_shape = (height, width, 3)
    backbone = backbones_lib.build_backbone(backbone_name, input_shape=input_shape,
                                            **(backbone_kwargs or {}))
    aspp = keras_cv.layers.SpatialPyramidPooling(
        dilation_rates=list(aspp_dilation_rates), num_channels=aspp_filters,
        dropout=aspp_dropout)
    model = (model_class or Segmenter)(
        backbone=backbone, num_classes=num_classes, projection_filters=projection_filters,
        spatial_pyramid_pooling=aspp,
        segmentation_head=_segmentation_head(num_classes, head_filters), name=name)
    # The ASPP keeps its branches in a list, out of TF checkpoints' reach (see tracking.py).
    tracking.track_sublayer_lists(model)
    return model


def segmentation_loss(y_true, logits, ignore_label=IGNORE_LABEL):
    """Mean pixel cross-entropy over non-ignored pixels (see `losses.py`)."""
    return masked_sparse_categorical_crossentropy(y_true, logits, ignore_label)
