"""Data: sources -> canonical example -> augmentation -> batches.

Importing this package registers the TFDS builders of the project (`digit_scenes`,
`voc_sbd`) so that `tfds.load('digit_scenes/detection')` works.
"""
# TEMPORARY while the builders are being written (lead will make these strict).
try:
    from rethink_tf.data import digit_scenes  # noqa: F401  (registers the TFDS builder)
except ImportError:
    pass
try:
    from rethink_tf.data import voc  # noqa: F401  (registers the TFDS builder)
except ImportError:
    pass
