"""RetinaNet detector (Keras-CV) with anchors, FPN and heads sized to the dataset.

Batch format (Keras-CV conventions): inputs `images` float32 [B, H, W, 3] in 0..255; targets
`{"boxes": float32 [B, M, 4] absolute xyxy, "classes": float32 [B, M]}` padded with -1 rows.

Standard use:
    model = build_detector("resnet_small", num_classes=10, image_size=128,
                           **DIGIT_SCENES_ANCHORS, fpn_filters=64, head_filters=64)
    model.compile(optimizer=..., box_loss="smoothl1", classification_loss="focal")
    model.fit(dataset_of_(images, bounding_boxes))
    detections = model.predict(images)   # {"boxes" xyxy, "classes", "confidence",
                                         #  "num_detections"}, score >= 0.05, <= 100 per image

Per-term and per-sub-batch losses for a custom train_step (ONE forward pass):
    y_pred = model(images, training=True)               # {"box": [B,A,4], "classification"}
    terms = detector_loss_terms(model, images, y_all, y_pred)
    human = sub_batch_loss_terms(terms, 0, h)
    pseudo = sub_batch_loss_terms(terms, h, None)
    loss = human["loss"] + weight * pseudo["loss"]
(equal to `detector_loss_terms` on each sub-batch's `slice_predictions`, which is slower). Each
call returns the box and classification terms normalised like Keras-CV's
`Detector.compute_loss` (by max(1, positive anchors of that sub-batch), so a sub-batch without
boxes still gives its background loss), plus per-image sums and positive counts for other normalisations. On the whole
batch, `detector_loss_terms(...)["loss"]` equals `model.compute_loss(x, y, y_pred)` (without
regularisation losses).
"""

import keras
import keras_cv
import numpy as np
from keras import ops
from keras_cv.src.models.object_detection.retinanet.retinanet import BOX_VARIANCE

from rethink_tf.models import backbones as backbones_lib
from rethink_tf.models import losses as losses_lib

BOUNDING_BOX_FORMAT = "xyxy"

# Anchors for the built-in `digit_scenes` benchmark (128 px images, digits 24..64 px): sizes
# 16/32/64 on P3/P4/P5 with 3 scales (x1, x1.26, x1.59) cover squares of 16..102 px at 3 aspect
# ratios; P6/P7 would only add 2x2 and 1x1 maps with anchors larger than any digit.
DIGIT_SCENES_ANCHORS = {"max_level": 5, "anchor_sizes": (16.0, 32.0, 64.0)}

DEFAULT_SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
MIN_LEVEL = 3  # Keras-CV's RetinaNet always feeds P3..P5 of the backbone to the FPN.


@keras.saving.register_keras_serializable(package="rethink_tf")
class FeaturePyramid(keras.layers.Layer):
    """RetinaNet FPN on backbone levels P3..P5, with P6/P7 from C5 as in the paper.

    Like `keras_cv.models.retinanet.FeaturePyramid` but with a width and a top level of choice,
    so a small detector does not pay for 256-channel maps.

    Args:
        filters: channels of every output level.
        max_level: 5, 6 or 7: the coarsest level produced.
    """

    def __init__(self, filters=256, max_level=7, **kwargs):
        super().__init__(**kwargs)
        if max_level not in (5, 6, 7):
            raise ValueError(f"FeaturePyramid max_level must be 5, 6 or 7, got {max_level}")
        self.filters = filters
        self.max_level = max_level
        conv = lambda k, s, name: keras.layers.Conv2D(filters, k, s, "same", name=name)
        # Lists, not dicts, so weight files and checkpoints see plain ordered sub-layers.
        self.lateral = [conv(1, 1, f"lateral_p{lvl}") for lvl in (3, 4, 5)]
        self.output_convs = [conv(3, 1, f"output_p{lvl}") for lvl in (3, 4, 5)]
        self.extra = [conv(3, 2, f"output_p{lvl}") for lvl in range(6, max_level + 1)]
        self.upsample = keras.layers.UpSampling2D(2)
        _track_by_name(self, self.lateral + self.output_convs + self.extra)

    def build(self, input_shape):
        for i, lvl in enumerate((3, 4, 5)):
            self.lateral[i].build((None, None, None, input_shape[f"P{lvl}"][-1]))
            self.output_convs[i].build((None, None, None, self.filters))
        if self.extra:
            self.extra[0].build((None, None, None, input_shape["P5"][-1]))
        if len(self.extra) > 1:
            self.extra[1].build((None, None, None, self.filters))
        self.built = True

    def call(self, inputs):
        p5 = self.lateral[2](inputs["P5"])
        p4 = self.lateral[1](inputs["P4"]) + self.upsample(p5)
        p3 = self.lateral[0](inputs["P3"]) + self.upsample(p4)
        outputs = [self.output_convs[0](p3), self.output_convs[1](p4), self.output_convs[2](p5)]
        if self.extra:
            p6 = self.extra[0](inputs["P5"])
            outputs.append(p6)
            if len(self.extra) > 1:
                outputs.append(self.extra[1](ops.relu(p6)))
        return tuple(outputs)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "max_level": self.max_level}


def _track_by_name(layer, sublayers):
    # TF checkpoints (tf.train.Checkpoint) do not follow Keras's tracked lists: without a
    # named attribute these sub-layers would be missing from `Checkpoint(model=...)`.
    for sub in sublayers:
        object.__setattr__(layer, f"_ckpt_{sub.name}", sub)
        layer._track_trackable(sub, name=f"_ckpt_{sub.name}")  # pylint: disable=protected-access


@keras.saving.register_keras_serializable(package="rethink_tf")
class PredictionHead(keras.layers.Layer):
    """Class or box subnet shared over pyramid levels: `depth` 3x3 conv+ReLU, then a 3x3 output.

    The output convolution computes in float32 so logits and deltas stay float32 under mixed
    precision.

    Args:
        output_filters: anchors per location x (num_classes or 4).
        bias_initializer: initializer of the output bias (the focal-loss prior for classes).
        filters: width of the hidden convolutions.
        depth: number of hidden convolutions.
        norm: "none" (Keras-CV's head) or "group": GroupNormalization after each hidden
            convolution. Training from random initialisation needs normalised heads (He et al.,
            "Rethinking ImageNet Pre-training"); group norm has no batch statistics, so one
            layer serves every pyramid level, and it does not depend on the batch size.
    """

    def __init__(self, output_filters, bias_initializer="zeros", filters=256, depth=3,
                 norm="none", **kwargs):
        super().__init__(**kwargs)
        if norm not in ("none", "group"):
            raise ValueError(f"PredictionHead norm must be 'none' or 'group', got {norm!r}")
        self.output_filters = output_filters
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.filters = filters
        self.depth = depth
        self.norm = norm
        normal = keras.initializers.RandomNormal(stddev=0.01)
        self.hidden = [keras.layers.Conv2D(filters, 3, padding="same",
                                           activation="relu" if norm == "none" else None,
                                           kernel_initializer=normal, name=f"hidden_{i}")
                       for i in range(depth)]
        self.norms = [keras.layers.GroupNormalization(groups=min(32, filters // 4) or 1,
                                                      name=f"hidden_norm_{i}")
                      for i in range(depth)] if norm == "group" else []
        _track_by_name(self, self.norms)
        self.prediction = keras.layers.Conv2D(output_filters, 3, padding="same",
                                              kernel_initializer=normal,
                                              bias_initializer=self.bias_initializer,
                                              dtype="float32", name="prediction")
        _track_by_name(self, self.hidden)

    def build(self, input_shape):
        shape = (None, None, None, input_shape[-1])
        for i, layer in enumerate(self.hidden):
            layer.build(shape)
            shape = (None, None, None, self.filters)
            if self.norms:
                self.norms[i].build(shape)
        self.prediction.build(shape)
        self.built = True

    def call(self, x):
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms:
                x = ops.relu(self.norms[i](x))
        return self.prediction(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_filters,)

    def get_config(self):
        return {**super().get_config(), "output_filters": self.output_filters,
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "filters": self.filters, "depth": self.depth, "norm": self.norm}


def _as_pair(data):
    """(x, y) from Keras 3's (x, y, sample_weight) tuples, or a Keras-CV dict unchanged."""
    if isinstance(data, dict):
        return data
    if len(data) == 3 and data[2] is not None:
        raise ValueError("the detector takes no sample_weight; weight losses in a custom "
                         "train_step with detector_loss_terms instead")
    return data[0], data[1]


@keras.saving.register_keras_serializable(package="rethink_tf")
class Detector(keras_cv.models.RetinaNet):
    """`keras_cv.models.RetinaNet` that also accepts Keras 3's (x, y, None) batches.

    Keras-CV 0.9 unpacks exactly (x, y), so `train_on_batch`, which passes
    (x, y, sample_weight), fails there; and its config forgets the feature pyramid.
    """

    def __init__(self, *args, feature_pyramid=None, **kwargs):
        super().__init__(*args, feature_pyramid=feature_pyramid, **kwargs)

    def train_step(self, *args):
        return super().train_step(*args[:-1], _as_pair(args[-1]))

    def compute_loss(self, x, y, y_pred, sample_weight=None, **kwargs):
        """Keras-CV's RetinaNet loss, normalised by max(1, GLOBAL number of positive anchors).

        Keras-CV divides by each replica's own positive count, so under tf.distribute a step
        differs from the single-device step on the same global batch; here the count is
        summed over replicas (`losses.cross_replica_normalizer`), which makes them equal.
        Keras-CV also zeroes the loss of a batch without positive anchors; dividing by at
        least 1 (tf-models-official divides by positives + 1) keeps the background loss of
        box-less images, and keeps one or two positives from inflating a whole batch's loss.
        """
        del sample_weight, kwargs
        boxes, classes = encode_detection_targets(self, x, y)
        cls_labels = ops.one_hot(ops.cast(classes, "int32"), self.num_classes, dtype="float32")
        positive = ops.cast(ops.greater(classes, -1.0), "float32")
        not_ignored = ops.cast(ops.not_equal(classes, -2.0), "float32")
        scale = 1.0 / positive_normalizer(ops.sum(positive))
        # The grandparent (keras.Model) applies the compiled per-output losses and weights.
        return super(keras_cv.models.RetinaNet, self).compute_loss(
            x=x, y={"box": boxes, "classification": cls_labels}, y_pred=y_pred,
            sample_weight={"box": positive * scale, "classification": not_ignored * scale})

    def test_step(self, *args):
        return super().test_step(*args[:-1], _as_pair(args[-1]))

    def get_config(self):
        config = super().get_config()
        config["feature_pyramid"] = keras.saving.serialize_keras_object(self.feature_pyramid)
        config["name"] = self.name
        return config

    @classmethod
    def from_config(cls, config):
        if isinstance(config.get("feature_pyramid"), dict):
            config["feature_pyramid"] = keras.layers.deserialize(config["feature_pyramid"])
        return super().from_config(config)


def make_prediction_decoder(score_threshold=0.05, max_detections=100, iou_threshold=0.5,
                            max_detections_per_class=None):
    """The per-class NMS decoder (`keras_cv.layers.MultiClassNonMaxSuppression`) in xyxy.

    Args:
        score_threshold: minimum sigmoid score kept. 0.05 for COCO evaluation (AP needs the
            low-score tail); higher (e.g. 0.5) for pseudo labels and serving.
        max_detections: boxes kept per image.
        iou_threshold: NMS IoU threshold.
        max_detections_per_class: defaults to `max_detections`.
    """
    return keras_cv.layers.MultiClassNonMaxSuppression(
        bounding_box_format=BOUNDING_BOX_FORMAT, from_logits=True,
        iou_threshold=iou_threshold, confidence_threshold=score_threshold,
        max_detections=max_detections,
        max_detections_per_class=max_detections_per_class or max_detections)


def set_decoder_threshold(model, score_threshold, max_detections=100, iou_threshold=0.5):
    """Replaces the detector's prediction decoder (e.g. 0.05 for eval, 0.5 for pseudo labels).

    Keras-CV rebuilds the predict/train/test functions, so the next `predict` uses it.

    Args:
        model: a detector from `build_detector`.
        score_threshold: minimum score kept.
        max_detections: boxes kept per image.
        iou_threshold: NMS IoU threshold.
    """
    model.prediction_decoder = make_prediction_decoder(score_threshold, max_detections,
                                                       iou_threshold)


def _image_hw(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(v) for v in image_size)
    return height, width


def build_label_encoder(*, max_level=7, anchor_sizes=None, anchor_scales=DEFAULT_SCALES,
                        anchor_aspect_ratios=DEFAULT_ASPECT_RATIOS, positive_threshold=0.5,
                        negative_threshold=0.4):
    """The anchor label encoder of a detector with these settings (see `build_detector`).

    `build_detector` gives its model this encoder; `pipeline_target_encoder` uses one built
    with the same arguments to encode anchor targets in the input pipeline instead.
    """
    levels = list(range(MIN_LEVEL, max_level + 1))
    strides = [2 ** level for level in levels]
    sizes = list(anchor_sizes) if anchor_sizes is not None else [4.0 * s for s in strides]
    if len(sizes) != len(levels):
        raise ValueError(f"anchor_sizes needs one size per level P{MIN_LEVEL}..P{max_level} "
                         f"({len(levels)}), got {sizes}")
    anchor_generator = keras_cv.layers.AnchorGenerator(
        bounding_box_format=BOUNDING_BOX_FORMAT, sizes=[float(s) for s in sizes],
        scales=[float(s) for s in anchor_scales],
        aspect_ratios=[float(a) for a in anchor_aspect_ratios], strides=strides,
        clip_boxes=True)
    return keras_cv.models.retinanet.LabelEncoder(
        bounding_box_format=BOUNDING_BOX_FORMAT, anchor_generator=anchor_generator,
        positive_threshold=positive_threshold, negative_threshold=negative_threshold,
        box_variance=BOX_VARIANCE)


def build_detector(backbone_name, num_classes, image_size, *, backbone_kwargs=None,
                   max_level=7, anchor_sizes=None, anchor_scales=DEFAULT_SCALES,
                   anchor_aspect_ratios=DEFAULT_ASPECT_RATIOS, fpn_filters=256,
                   head_filters=256, head_depth=3, positive_threshold=0.5,
                   negative_threshold=0.4, score_threshold=0.05, max_detections=100,
                   nms_iou_threshold=0.5, name="retinanet", model_class=None,
                   head_norm="none"):
    """Builds a Keras-CV `RetinaNet` (FPN, focal + smooth-L1/Huber losses) in xyxy.

    Compile it with `model.compile(optimizer, box_loss="smoothl1"|"huber",
    classification_loss="focal")`.

    Args:
        backbone_name: a name from `rethink_tf.models.backbones.BACKBONE_NAMES`.
        num_classes: object classes, without background; classes are 0..num_classes-1.
        image_size: int or (height, width); fixed, and divisible by 2**max_level, because
            anchors are computed from the static image shape.
        backbone_kwargs: extra arguments for `build_backbone` (e.g. drop_path_rate).
        max_level: coarsest pyramid level, 5..7 (levels start at P3).
        anchor_sizes: base anchor size per level P3..P<max_level>; default 4 * stride
            (32..512, the paper's). See `DIGIT_SCENES_ANCHORS` for the built-in benchmark.
        anchor_scales: multipliers of the base size at every level.
        anchor_aspect_ratios: width / height ratios at every level.
        fpn_filters: FPN width (256 in the paper).
        head_filters: width of the class and box subnets.
        head_depth: hidden convolutions in each subnet.
        positive_threshold: IoU from which an anchor is positive for its best ground truth.
        negative_threshold: IoU under which an anchor is background (between: ignored).
        score_threshold: prediction decoder score threshold (0.05 for COCO evaluation).
        max_detections: prediction decoder boxes per image.
        nms_iou_threshold: NMS IoU threshold.
        name: model name.
        head_norm: "none" or "group" normalisation in the class and box subnets (see
            `PredictionHead`).
        model_class: a subclass of `Detector` to instantiate (e.g. the self-training student's,
            which adds its train_step); default `Detector`.

    Returns:
        A `Detector` (a `keras_cv.models.RetinaNet`); `model.backbone` is the backbone (its
        variables are the model's), `model.anchor_generator` the anchors.
    """
    height, width = _image_hw(image_size)
    if max_level not in (5, 6, 7):
        raise ValueError(f"max_level must be 5, 6 or 7, got {max_level}")
    if height % 2 ** max_level or width % 2 ** max_level:
        raise ValueError(f"image_size {(height, width)} must be divisible by 2**max_level = "
                         f"{2 ** max_level}")
    label_encoder = build_label_encoder(
        max_level=max_level, anchor_sizes=anchor_sizes, anchor_scales=anchor_scales,
        anchor_aspect_ratios=anchor_aspect_ratios, positive_threshold=positive_threshold,
        negative_threshold=negative_threshold)
    num_anchors = len(anchor_scales) * len(anchor_aspect_ratios)
    prior = keras.initializers.Constant(-np.log((1 - 0.01) / 0.01))
    backbone = backbones_lib.build_backbone(backbone_name, input_shape=(height, width, 3),
                                            **(backbone_kwargs or {}))
    model = (model_class or Detector)(
        backbone=backbone, num_classes=num_classes, bounding_box_format=BOUNDING_BOX_FORMAT,
        label_encoder=label_encoder,
        prediction_decoder=make_prediction_decoder(score_threshold, max_detections,
                                                   nms_iou_threshold),
        feature_pyramid=FeaturePyramid(fpn_filters, max_level, name="feature_pyramid"),
        classification_head=PredictionHead(num_anchors * num_classes, prior, head_filters,
                                           head_depth, norm=head_norm,
                                           name="classification_head"),
        box_head=PredictionHead(num_anchors * 4, "zeros", head_filters, head_depth,
                                norm=head_norm, name="box_head"),
        name=name)
    return model


def slice_predictions(y_pred, start, stop):
    """The raw predictions of examples [start:stop] of a batch (for sub-batch losses)."""
    return {key: value[start:stop] for key, value in y_pred.items()}


def trim_box_padding(y_true):
    """Drops the padding columns beyond the batch's largest count of real boxes.

    Keras-CV's label encoder computes an [B, anchors, max_boxes] IoU matrix; batches padded to
    100 boxes for a dataset with at most a handful per image waste most of that work.
    Assumes padding rows (class -1) come after the real ones, as the pipelines write them.
    """
    classes = ops.cast(y_true["classes"], "float32")
    count = ops.max(ops.sum(ops.cast(classes >= 0, "int32"), axis=1))
    count = ops.maximum(count, 1)  # keep one (padding) column for box-less batches
    return {"boxes": ops.cast(y_true["boxes"], "float32")[:, :count],
            "classes": classes[:, :count]}


class _NoMetric:
    def update_state(self, *args, **kwargs):
        del args, kwargs


# Keys of anchor targets encoded in the input pipeline (`pipeline_target_encoder`).
BOX_TARGETS, CLASS_TARGETS = "box_targets", "class_targets"


def encode_detection_targets(model, images, y_true):
    """Anchor targets of a batch: box deltas [B, A, 4] and classes [B, A].

    Classes are 0..C-1 for positive anchors, -1 for background and -2 for ignored anchors
    (IoU between the two thresholds). `images` only supplies the image shape. Targets the
    input pipeline already encoded (`pipeline_target_encoder`) are used as they are.
    """
    if CLASS_TARGETS in y_true:
        return y_true[BOX_TARGETS], y_true[CLASS_TARGETS]
    return _encode_targets(model.label_encoder, model.bounding_box_format, images, y_true)


def _encode_targets(label_encoder, bounding_box_format, images, y_true):
    y_true = trim_box_padding(y_true)
    y_true = keras_cv.bounding_box.convert_format(
        y_true, source=bounding_box_format, target=label_encoder.bounding_box_format,
        images=images)
    return label_encoder(images, y_true)


def pipeline_target_encoder(label_encoder):
    """`fn(images, targets) -> targets` adding the batch's anchor targets, for `tf.data`.

    Encodes in the input pipeline what the train step would otherwise encode (the
    placement of tf-models-official's RetinaNet parser): `targets` gains `box_targets`
    [B, A, 4] and `class_targets` [B, A], which `Detector.compute_loss` and
    `detector_loss_terms` then use as they are; boxes and classes stay for anything else
    that reads them. The values equal the in-step encoding's.

    Args:
        label_encoder: from `build_label_encoder` with the detector's settings (its own
            instance, not the model's: its matched-box metric is switched off).
    """
    # Keras-CV's encoder also updates a matched-box metric on every call: a variable
    # assignment that has no place in an input pipeline (and nothing reads it there).
    label_encoder.matched_boxes_metric = _NoMetric()

    def encode(images, targets):
        boxes, classes = _encode_targets(label_encoder, BOUNDING_BOX_FORMAT,
                                         ops.cast(images, "float32"), targets)
        return {**targets, BOX_TARGETS: boxes, CLASS_TARGETS: classes}
    return encode


def _box_loss_fn(model):
    # The compiled objects when there are (their `call` gives per-anchor values), else the
    # Keras-CV defaults.
    return getattr(model, "box_loss", None) or keras_cv.losses.SmoothL1Loss(l1_cutoff=1.0)


def _classification_loss_fn(model):
    return (getattr(model, "classification_loss", None)
            or keras_cv.losses.FocalLoss(from_logits=True))


def detector_loss_terms(model, images, y_true, y_pred):
    """Box and classification losses of a (sub-)batch from already computed predictions.

    Mirrors `Detector.compute_loss`: focal loss over non-ignored anchors and
    box loss over positive anchors, both summed and divided by max(1, positive anchors in the
    (sub-)batch) (summed over replicas under tf.distribute, see `positive_normalizer`); with
    no positive anchor, e.g. when no image has a box, the box term is 0 and the focal term is
    the background loss. Uses the losses passed to `model.compile` (per-anchor, via their `call`)
    or Keras-CV's focal and smooth-L1 losses if the model is not compiled.

    Args:
        model: a detector from `build_detector`.
        images: [b, H, W, 3] images (only their height and width are used).
        y_true: {"boxes": [b, M, 4] xyxy, "classes": [b, M]} with -1 padding.
        y_pred: the model's raw outputs for the same examples: {"box": [b, A, 4],
            "classification": [b, A, num_classes]} (see `slice_predictions`).

    Returns:
        A dict of tensors:
            loss: box_loss + classification_loss (scalar).
            box_loss, classification_loss: normalised terms (scalars).
            num_positives: positive anchors in the sub-batch (scalar float).
            box_loss_per_image, classification_loss_per_image: un-normalised sums, [b].
            num_positives_per_image: [b].
    """
    box_targets, class_targets = encode_detection_targets(model, images, y_true)
    box_pred = ops.cast(y_pred["box"], "float32")
    cls_pred = ops.cast(y_pred["classification"], "float32")
    positive = ops.cast(ops.greater(class_targets, -1.0), "float32")
    not_ignored = ops.cast(ops.not_equal(class_targets, -2.0), "float32")
    cls_labels = ops.one_hot(ops.cast(class_targets, "int32"), model.num_classes,
                             dtype="float32")
    box_per_anchor = _box_loss_fn(model).call(box_targets, box_pred)
    cls_per_anchor = _classification_loss_fn(model).call(cls_labels, cls_pred)
    per_image = {"box_loss_per_image": ops.sum(box_per_anchor * positive, axis=1),
                 "classification_loss_per_image": ops.sum(cls_per_anchor * not_ignored, axis=1),
                 "num_positives_per_image": ops.sum(positive, axis=1)}
    return {**sub_batch_loss_terms(per_image, 0, None), **per_image}


def sub_batch_loss_terms(terms, start, stop):
    """The normalised terms of images [start:stop] from a batch's per-image sums.

    One `detector_loss_terms` call over a whole batch, then this per sub-batch (e.g. human and
    pseudo-labelled images), gives the same values as a call per sub-batch on sliced
    predictions, without the sliced predictions' full-size gradient buffers.

    Returns:
      {"loss", "box_loss", "classification_loss", "num_positives"} (scalars).
    """
    positives = ops.sum(terms["num_positives_per_image"][start:stop])
    normalizer = positive_normalizer(positives)
    box_loss = ops.sum(terms["box_loss_per_image"][start:stop]) / normalizer
    cls_loss = ops.sum(terms["classification_loss_per_image"][start:stop]) / normalizer
    return {"loss": box_loss + cls_loss, "box_loss": box_loss, "classification_loss": cls_loss,
            "num_positives": positives}


def positive_normalizer(local_positives):
    """max(1, positive anchors of the (sub-)batch summed over replicas): the loss divisor.

    Global, so that a distributed step equals the single-device step; at least 1, so that a
    (sub-)batch without boxes still teaches background (Keras-CV's `divide_no_nan` zeroed
    it) and a batch with one positive anchor is not scaled up by its count.
    """
    return ops.maximum(losses_lib.cross_replica_normalizer(local_positives), 1.0)


def decode_detections(model, y_pred, images):
    """Decodes raw outputs into {"boxes" xyxy, "classes", "confidence", "num_detections"}.

    Padding rows have class -1 and confidence -1. Uses the model's current decoder (see
    `set_decoder_threshold`).
    """
    return model.decode_predictions(y_pred, images)
