"""Data: sources -> canonical example -> augmentation -> batches.

Importing this package registers the TFDS builders of the project (`digit_scenes`,
`voc_sbd`) so that `tfds.load('digit_scenes/detection')` works.
"""
from rethink_tf.data import digit_scenes  # noqa: F401  (registers the TFDS builder)
from rethink_tf.data import voc  # noqa: F401  (registers the TFDS builder)
