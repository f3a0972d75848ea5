"""Makes every variable of a Keras model reachable by TensorFlow checkpoints.

Keras 3 keeps sub-layers held in Python lists in its own weight lists, but TensorFlow's
object-graph checkpoints (`tf.train.Checkpoint(model=model)`) follow only attributes that are
TF trackables, and Keras's `TrackedList` is not one. The variables of such sub-layers are in
`model.variables` yet are not saved with the model: trainable ones still reach a training
checkpoint through the optimizer's variable list, non-trainable ones (batch-norm moving
statistics) do not reach it at all and are silently left at their initial values on restore.
Keras-CV's `SpatialPyramidPooling` (DeepLabV3+'s ASPP) keeps its branches this way.

    model = build_segmenter(...)
    track_sublayer_lists(model)     # the builders call this
    untracked_variables(tf.train.Checkpoint(model=model), model.variables)  # -> []
"""

import keras
import tensorflow as tf
from keras.src.utils import tracking as keras_tracking


PREFIX = "_ckpt_"


def reachable_ids(root):
    """Ids of every object a checkpoint of `root` reaches (its trackable descendants)."""
    return {id(obj) for obj in tf.train.TrackableView(root).descendants()}


def untracked_variables(root, variables):
    """The `variables` a checkpoint of `root` would not save (empty when all are saved)."""
    reachable = reachable_ids(root)
    return [v for v in variables if id(v) not in reachable]


def track_sublayer_lists(model):
    """Tracks, under stable names, every sub-layer and random state a checkpoint would miss.

    Each layer of `model` (recursively) whose attribute `attr` is a list or tuple of layers gets
    the ones a checkpoint does not reach yet tracked as `_ckpt_<attr>_<index>`: positional names,
    so the checkpoint keys do not depend on Keras's global auto-naming counters.

    The state of a layer's `keras.random.SeedGenerator` (stochastic depth, dropout) is tracked
    the same way, as `_ckpt_<attr>_state`.

    Returns:
      The number of sub-layers (and generator states) newly tracked.
    """
    added = 0
    reachable = reachable_ids(model)
    # pylint: disable-next=protected-access
    layers = model._flatten_layers(include_self=True, recursive=True)
    for layer in layers:
        # Public attributes first: their names are the layer's API, more stable than the
        # private lists Keras keeps (`_layers`).
        for attr, value in sorted(vars(layer).items(), key=lambda kv: kv[0].startswith("_")):
            if attr.startswith(PREFIX):
                continue
            if isinstance(value, keras.random.SeedGenerator) and id(value.state) not in reachable:
                # Random-number state (stochastic depth, dropout): saved so a resumed run
                # draws what an uninterrupted one would.
                name = f"{PREFIX}{attr.lstrip('_')}_state"
                _add_dependency(layer, name, value.state)
                reachable.add(id(value.state))
                added += 1
                continue
            if not isinstance(value, (list, tuple)):
                continue
            for i, sub in enumerate(value):
                if not isinstance(sub, keras.layers.Layer) or id(sub) in reachable:
                    continue
                name = f"{PREFIX}{attr.lstrip('_')}_{i}"
                _add_dependency(layer, name, sub)
                reachable |= reachable_ids(sub) | {id(sub)}
                added += 1
    return added


def _add_dependency(layer, name, trackable):
    """A TF checkpoint dependency `name` of `layer`, invisible to Keras's own tracking (which
    would list the object a second time in the layer's weights, or refuse a built layer)."""
    object.__setattr__(layer, name, trackable)
    with keras_tracking.DotNotTrackScope():
        layer._track_trackable(trackable, name=name)  # pylint: disable=protected-access
