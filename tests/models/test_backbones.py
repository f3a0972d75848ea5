"""Backbone factory: names, pyramid levels, sizes, stochastic depth, weights in and out."""

import numpy as np
import pytest

from rethink_tf.models import backbones


def _features(backbone, images):
    import keras  # pylint: disable=g-import-not-at-top
    levels = sorted(backbone.pyramid_level_inputs)
    extractor = keras.Model(backbone.inputs, [backbone.get_layer(
        backbone.pyramid_level_inputs[k]).output for k in levels])
    return dict(zip(levels, extractor(images)))


def test_compact_resnets_expose_p2_to_p5_and_have_the_documented_sizes():
    tiny = backbones.build_backbone("resnet_tiny", input_shape=(64, 64, 3))
    small = backbones.build_backbone("resnet_small")
    assert 2_000 <= tiny.count_params() <= 10_000
    assert 200_000 <= small.count_params() <= 1_000_000
    feats = _features(tiny, np.zeros((1, 64, 64, 3), "float32"))
    assert {k: v.shape[1] for k, v in feats.items()} == {"P2": 16, "P3": 8, "P4": 4, "P5": 2}
    assert backbones.backbone_name(tiny) == "resnet_tiny"


def test_keras_cv_families_match_their_reference_parameter_counts():
    # Keras-CV's preset metadata counts: the explicit arguments rebuild the same networks.
    assert backbones.build_backbone("resnet18").count_params() == 11_186_112
    assert backbones.build_backbone("efficientnetv2_b0").count_params() == 5_919_312


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*resnet_tiny"):
        backbones.build_backbone("resnet9")


def test_drop_path_is_random_in_training_only_and_refused_by_keras_cv_resnet():
    model = backbones.build_backbone("resnet_tiny", input_shape=(32, 32, 3), drop_path_rate=0.5)
    x = np.random.RandomState(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    train_outs = [np.asarray(model(x, training=True)) for _ in range(3)]
    assert not all(np.allclose(train_outs[0], out) for out in train_outs[1:])
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))
    with pytest.raises(ValueError, match="no stochastic depth"):
        backbones.build_backbone("resnet18", drop_path_rate=0.1)


def test_weights_round_trip(tmp_path):
    source = backbones.build_backbone("resnet_tiny")
    target = backbones.build_backbone("resnet_tiny")
    assert not all(np.array_equal(a, b) for a, b in
                   zip(source.get_weights(), target.get_weights()))
    path = str(tmp_path / "bb.weights.h5")
    meta = backbones.save_backbone_weights(source, path)
    assert meta.endswith("bb.backbone.json")
    backbones.load_backbone_weights(target, path)
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mismatched_architecture_raises_naming_both_and_loads_nothing(tmp_path):
    path = str(tmp_path / "bb.weights.h5")
    backbones.save_backbone_weights(backbones.build_backbone("resnet_tiny"), path)
    other = backbones.build_backbone("resnet_small")
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"saved 'resnet_tiny' vs target 'resnet_small'.*"
                                         r"variable 'stem_conv/kernel' saved \(3, 3, 3, 4\)"):
        backbones.load_backbone_weights(other, path)
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        backbones.load_backbone_weights(other, str(tmp_path / "missing.weights.h5"))


def test_set_synchronized_batchnorm_reaches_every_batchnorm():
    import keras  # pylint: disable=g-import-not-at-top
    model = backbones.build_backbone("resnet_tiny")
    count = backbones.set_synchronized_batchnorm(model)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert count == len(bns) > 0
    assert all(l.synchronized for l in bns)


def test_weights_load_into_a_backbone_with_stochastic_depth(tmp_path):
    """Stochastic depth adds weightless layers that reorder the graph; loading is by path."""
    import numpy as np  # pylint: disable=g-import-not-at-top,reimported
    from rethink_tf.models import backbones as b  # pylint: disable=g-import-not-at-top
    source = b.build_backbone("resnet_tiny", (32, 32, 3))
    target = b.build_backbone("resnet_tiny", (64, 64, 3), drop_path_rate=0.2)
    path = str(tmp_path / "bb.weights.h5")
    b.save_backbone_weights(source, path)
    b.load_backbone_weights(target, path)
    saved = {v.path: v.numpy() for v in source.weights}
    for v in target.weights:
        np.testing.assert_array_equal(v.numpy(), saved[v.path])
