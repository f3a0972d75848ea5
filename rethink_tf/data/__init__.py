"""Data: sources -> canonical example -> augmentation -> batches.

Importing this package registers the TFDS builders of the project (`digit_scenes`,
`voc_sbd`) so that `tfds.load('digit_scenes/detection')` works. A builder that fails to
import fails this import: a silently missing builder would surface later as an unknown
dataset name. Their heavy or optional dependencies (mlxtend, scikit-image, scipy) are
imported only when a dataset is generated.
"""
from rethink_tf.data import digit_scenes  # noqa: F401  (registers the TFDS builder)
from rethink_tf.data import voc  # noqa: F401  (registers the TFDS builder)
