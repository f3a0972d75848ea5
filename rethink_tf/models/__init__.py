"""Models: backbone factory, RetinaNet detector, DeepLabV3+ segmenter, classifier, losses."""

from rethink_tf.models.backbones import BACKBONE_NAMES
from rethink_tf.models.backbones import backbone_name
from rethink_tf.models.backbones import build_backbone
from rethink_tf.models.backbones import load_backbone_weights
from rethink_tf.models.backbones import save_backbone_weights
from rethink_tf.models.backbones import set_synchronized_batchnorm
from rethink_tf.models.classifier import build_classifier
from rethink_tf.models.detector import DIGIT_SCENES_ANCHORS
from rethink_tf.models.detector import build_detector
from rethink_tf.models.detector import decode_detections
from rethink_tf.models.detector import detector_loss_terms
from rethink_tf.models.detector import set_decoder_threshold
from rethink_tf.models.detector import slice_predictions
from rethink_tf.models.detector import sub_batch_loss_terms
from rethink_tf.models.losses import MaskedSparseCategoricalCrossentropy
from rethink_tf.models.losses import masked_sparse_categorical_crossentropy
from rethink_tf.models.losses import masked_sparse_categorical_crossentropy_per_example
from rethink_tf.models.losses import normalised_pixel_loss
from rethink_tf.models.segmenter import build_segmenter
