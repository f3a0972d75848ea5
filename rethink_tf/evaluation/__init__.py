"""Evaluation: COCO box AP (pycocotools' protocol, scored by faster-coco-eval) and mean IoU."""

from rethink_tf.evaluation.coco_ap import CocoDetectionEvaluator
from rethink_tf.evaluation.coco_ap import coco_category_ids
from rethink_tf.evaluation.miou import MeanIoU
