"""DeepLabV3+ segmenter and classifier: shapes, logits, training step, backbone transfer."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rethink_tf.models import backbones  # pylint: disable=wrong-import-position
from rethink_tf.models import classifier as classifier_lib  # pylint: disable=wrong-import-position
from rethink_tf.models import losses  # pylint: disable=wrong-import-position
from rethink_tf.models import segmenter as segmenter_lib  # pylint: disable=wrong-import-position


def _tiny_segmenter():
    return segmenter_lib.build_segmenter("resnet_tiny", 3, 64, aspp_filters=8,
                                         aspp_dilation_rates=(1, 2), projection_filters=4,
                                         head_filters=8)


def test_segmenter_outputs_logits_at_input_resolution_and_trains():
    model = _tiny_segmenter()
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    masks = rng.randint(0, 3, (2, 64, 64, 1)).astype("int32")
    masks[:, :16] = 255
    logits = np.asarray(model(images))
    assert logits.shape == (2, 64, 64, 3) and logits.dtype == np.float32
    # Logits, not probabilities: Keras-CV's softmax head was replaced.
    assert not np.allclose(logits.sum(-1), 1.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=losses.MaskedSparseCategoricalCrossentropy())
    history = model.fit(images, masks, epochs=2, batch_size=2, verbose=0).history["loss"]
    assert all(np.isfinite(history))


def test_segmenter_rejects_sizes_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        segmenter_lib.build_segmenter("resnet_tiny", 3, 48)


def test_classifier_logits_and_backbone_transfer_to_segmenter(tmp_path):
    clf = classifier_lib.build_classifier("resnet_tiny", 10, 32, dropout=0.2)
    out = np.asarray(clf(np.zeros((2, 32, 32, 3), "float32")))
    assert out.shape == (2, 10) and out.dtype == np.float32
    assert clf.backbone.count_params() < clf.count_params()
    path = str(tmp_path / "pretrained.weights.h5")
    backbones.save_backbone_weights(clf.backbone, path)
    seg = _tiny_segmenter()
    images = np.random.RandomState(1).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    before = np.asarray(seg(images))
    backbones.load_backbone_weights(seg.backbone, path)
    for a, b in zip(clf.backbone.get_weights(), seg.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The segmenter's own forward pass uses the loaded (shared) variables.
    assert not np.allclose(before, np.asarray(seg(images)))
