"""SimCLR self-supervised pre-training: projection head, NT-Xent loss and the train_step.

The model maps a batch of images to projections `z = g(pool(f(x)))`; `f` is a backbone from
`rethink_tf.models.backbones` (its weights are what detection and segmentation load), `g` the
SimCLR v2-style projection head (Dense-BN-ReLU, then Dense-BN). A training batch is a pair
`(view1, view2)` of two augmentations of the same images (`rethink_tf.data.simclr_augment`).

Distribution: under a `tf.distribute` strategy with several replicas, each replica gathers the
projections of every replica (`ReplicaContext.all_gather`, whose gradient sums back to the
owner), so the negatives of every example are all 2N - 2 other views of the global batch, as
in the paper, and batch norm is synchronised (`sync_batchnorm`). A replica's loss is the mean
over its own anchors, scaled by 1 / replicas as Keras scales losses, so that the gradients
that the optimiser sums over replicas equal those of one device holding the whole batch.

Optimiser: SGD with momentum (the project's `build_optimizer`: warm-up + cosine, decoupled
weight decay without BN/bias). The paper uses LARS for batches of 4096; Keras has none, and at
the batch sizes used here (64..512) SGD with momentum trains SimCLR well.
"""

import keras
import tensorflow as tf
from keras import ops

from rethink_tf.models import backbones as backbones_lib

_LARGE_NUM = 1e9


def _all_gather(z):
    """Concatenates `z` over replicas (replica order); identity with one replica.

    Returns:
      (z of the whole global batch, index of this replica's first row in it).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return z, 0
    gathered = ctx.all_gather(z, axis=0)
    return gathered, ctx.replica_id_in_sync_group * tf.shape(z)[0]


def _scale_for_replicas(value):
    """Divides a per-replica loss by the replica count (gradients are summed over replicas)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


def contrastive_logits(z1, z2, temperature, z1_all=None, z2_all=None, offset=0):
    """Logits of each anchor against every candidate, and the index of its positive.

    Anchors are the local rows of `z1` and `z2`; candidates are all rows of the (gathered)
    `z1_all` and `z2_all` except the anchor itself. For an anchor of view 1 the logits are
    `[sim(z1_i, z2_all), sim(z1_i, z1_all) masked at i]`, its positive is `offset + i` (the
    same image's other view); likewise for view 2.

    Args:
      z1, z2: float [B, D] projections of the two views of the local batch.
      temperature: softmax temperature tau.
      z1_all, z2_all: float [N, D] projections of the whole batch over replicas (None: the
        local batch, i.e. one replica).
      offset: row of the local batch's first example in `z1_all` / `z2_all`.

    Returns:
      (logits [2B, 2N], positive index int32 [2B]).
    """
    z1 = ops.normalize(ops.cast(z1, "float32"), axis=-1)
    z2 = ops.normalize(ops.cast(z2, "float32"), axis=-1)
    z1_all = z1 if z1_all is None else ops.normalize(ops.cast(z1_all, "float32"), axis=-1)
    z2_all = z2 if z2_all is None else ops.normalize(ops.cast(z2_all, "float32"), axis=-1)
    batch = ops.shape(z1)[0]
    total = ops.shape(z1_all)[0]
    positives = ops.arange(batch, dtype="int32") + ops.cast(offset, "int32")
    self_mask = ops.one_hot(positives, total) * _LARGE_NUM
    logits_12 = ops.matmul(z1, ops.transpose(z2_all)) / temperature
    logits_11 = ops.matmul(z1, ops.transpose(z1_all)) / temperature - self_mask
    logits_21 = ops.matmul(z2, ops.transpose(z1_all)) / temperature
    logits_22 = ops.matmul(z2, ops.transpose(z2_all)) / temperature - self_mask
    logits = ops.concatenate([ops.concatenate([logits_12, logits_11], axis=1),
                              ops.concatenate([logits_21, logits_22], axis=1)], axis=0)
    return logits, ops.concatenate([positives, positives], axis=0)


def nt_xent_loss(z1, z2, temperature=0.1, z1_all=None, z2_all=None, offset=0):
    """NT-Xent (normalised temperature-scaled cross-entropy), averaged over the 2B anchors.

    loss = mean over anchors a of -log(exp(sim(a, a+) / t) / sum_{k != a} exp(sim(a, k) / t))
    with cosine similarity, a+ the other view of a's image and k over all 2N views.

    Args:
      z1, z2: float [B, D] projections of the two views (row i of each: the same image).
      temperature: tau.
      z1_all, z2_all, offset: the global batch when distributed (see `contrastive_logits`).

    Returns:
      Scalar float32 loss.
    """
    logits, positives = contrastive_logits(z1, z2, temperature, z1_all, z2_all, offset)
    return ops.mean(keras.losses.sparse_categorical_crossentropy(
        positives, logits, from_logits=True))


@keras.saving.register_keras_serializable(package="rethink_tf")
class SimCLR(keras.Model):
    """Backbone + global pooling + projection head, trained with NT-Xent on view pairs.

    Args:
      backbone: a backbone from `build_backbone` (kept as `self.backbone`).
      projection_dim: output size of the projection head.
      hidden_dim: width of the head's hidden layer (0 = the backbone's output width).
      temperature: NT-Xent temperature.
    """

    def __init__(self, backbone, projection_dim=64, hidden_dim=0, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim)
        self.temperature = float(temperature)
        width = self.hidden_dim or int(backbone.output_shape[-1])
        self.pool = keras.layers.GlobalAveragePooling2D(name="avg_pool")
        self.projector = keras.Sequential([
            keras.layers.Dense(width, use_bias=False, name="proj_hidden"),
            keras.layers.BatchNormalization(name="proj_hidden_bn"),
            keras.layers.ReLU(name="proj_relu"),
            keras.layers.Dense(self.projection_dim, use_bias=False, name="proj_out"),
            keras.layers.BatchNormalization(center=False, name="proj_out_bn"),
        ], name="projector")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.contrastive_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.accuracy_tracker = keras.metrics.Mean(name="contrastive_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.contrastive_tracker, self.accuracy_tracker]

    def features(self, images, training=False):
        """Pooled backbone features [B, C] (what a linear probe reads)."""
        return self.pool(self.backbone(images, training=training))

    def call(self, images, training=False):
        return ops.cast(self.projector(self.features(images, training), training=training),
                        "float32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """NT-Xent of `y_pred` = projections of concat([view1, view2]) (+ layer losses).

        Updates the per-term trackers with unscaled values and returns the loss scaled for
        distribution (1 / replicas), as Keras's own losses are.
        """
        del x, y, sample_weight
        z1, z2 = ops.split(y_pred, 2, axis=0)
        z1_all, offset = _all_gather(z1)
        z2_all, _ = _all_gather(z2)
        logits, positives = contrastive_logits(z1, z2, self.temperature, z1_all, z2_all, offset)
        contrastive = ops.mean(keras.losses.sparse_categorical_crossentropy(
            positives, logits, from_logits=True))
        accuracy = ops.mean(ops.cast(
            ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), positives), "float32"))
        total = contrastive
        if self.losses:
            total = total + ops.cast(ops.sum(self.losses), "float32")
        self.contrastive_tracker.update_state(contrastive)
        self.accuracy_tracker.update_state(accuracy)
        self.loss_tracker.update_state(total)
        return _scale_for_replicas(total)

    def train_step(self, data):
        view1, view2 = data[0], data[1]
        images = ops.concatenate([view1, view2], axis=0)
        with tf.GradientTape() as tape:
            z = self(images, training=True)
            loss = self.compute_loss(y_pred=z, training=True)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "projection_dim": self.projection_dim, "hidden_dim": self.hidden_dim,
                "temperature": self.temperature, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def build_simclr(backbone_name, image_size, *, projection_dim=64, hidden_dim=0,
                 temperature=0.1, backbone_kwargs=None, sync_batchnorm=True):
    """Builds a `SimCLR` model on a named backbone and builds its weights.

    Args:
      backbone_name: a name from `BACKBONE_NAMES`.
      image_size: side of the square views.
      projection_dim, hidden_dim, temperature: see `SimCLR`.
      backbone_kwargs: extra `build_backbone` arguments.
      sync_batchnorm: synchronise batch-norm statistics across replicas.

    Returns:
      A built `SimCLR` model.
    """
    backbone = backbones_lib.build_backbone(
        backbone_name, input_shape=(image_size, image_size, 3), **(backbone_kwargs or {}))
    model = SimCLR(backbone, projection_dim=projection_dim, hidden_dim=hidden_dim,
                   temperature=temperature, name="simclr")
    model(ops.zeros((2, image_size, image_size, 3)))
    if sync_batchnorm:
        backbones_lib.set_synchronized_batchnorm(model, True)
    return model
