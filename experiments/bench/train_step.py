r"""Peer benchmark: training images/s of our RetinaNet against tf-models-official's RetinaNet.

  python experiments/bench/train_step.py [--backbone=resnet18] [--image_size=128] \
      [--batch_size=16] [--steps=20] [--repeats=7] [--chunk=5] [--encode=step|pipeline] \
      [--out=/tmp/train_step.json]

Both detectors are built with the same backbone depth (ResNet-18), image size, batch, pyramid
levels (P3..P5), FPN width, head width and depth, anchors (sizes 16/32/64 = 2 x stride, 3 scales,
aspect ratios 0.5/1/2) and IoU thresholds (positive >= 0.5, ignored 0.4..0.5), and trained on the
same preloaded batch (one `tf.data` element repeated):

* ours: `rethink_tf.models.detector.build_detector` (Keras 3 / Keras-CV RetinaNet), compiled as
  `rethink_tf.training.tasks.compile_model` does (`box_loss="smoothl1"`,
  `classification_loss="focal"`, `jit_compile=False`) with the library's optimizer
  (`optimizer.SGDL2(0.01, momentum=0.9)`: what `build_optimizer` builds, its L2 term and
  clipping off; TF's fused momentum kernel, as the peer's SGD uses), trained
  with `model.fit` (its train_step encodes anchor targets with Keras-CV's label encoder, runs
  forward, focal + smooth-L1 loss, backward and the SGD update).
* peer: `official.vision.modeling.factory.build_retinanet` (tf_keras / Keras 2) from
  `official.vision.configs.retinanet.RetinaNet` with `Backbone(type='resnet',
  resnet=ResNet(model_id=18))`, trained by a `tf.function` step that mirrors
  `official.vision.tasks.retinanet.RetinaNetTask.train_step` / `build_losses`: anchor targets
  from `official.vision.ops.anchor.AnchorLabeler` (per image, inside the step as ours does),
  `official.vision.losses.focal_loss.FocalLoss` + `tf_keras.losses.Huber` summed and divided by
  (positives + 1), GradientTape, `tf_keras.optimizers.SGD(0.01, momentum=0.9)`.

Loss constants are set equal (focal alpha 0.25, gamma 2; Huber delta 1 = smooth-L1 cutoff 1; box
weight 1); the official defaults (gamma 1.5, delta 0.1, box weight 50) cost the same compute.

Anchor targets (`--encode`): `step` (default) encodes them inside both train steps; `pipeline`
encodes them in tf.data on both sides (ours: `train.encode_targets=pipeline`, i.e.
`detector.pipeline_target_encoder` in a dataset map; the peer: its `AnchorLabeler` per image in
a dataset map, where its own parser puts it), the steps only reading them.

Measurement: each side is built and warmed up (`--warmup` steps, which include tracing), then
`--repeats` rounds run `--steps` timed steps per side, the sides alternating every `--chunk`
steps (ours, peer, ours, peer, ...; the first side swapped each round) so machine load hits
both alike. Ours trains as `trainer.train` does, in ONE `model.fit` call for the whole
measurement (fit's per-step work counted, its per-call set-up once, in the warm-up): a
callback waits for ours' step at the end of each chunk and runs the peer's chunks there.
Images/s = steps * batch / wall seconds of the side's chunks, medians reported. `--profile`
also times parts of a step on both sides (label encoding, forward, forward+loss,
forward+loss+backward) with the same alternation.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras 3 warns on every fit call (dict-input backbone, shuffle with a Dataset): noise here.
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# experiments/bench/ -> repository root on sys.path, so `rethink_tf` imports from a checkout.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

PEER_RESNET_IDS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101,
                   "resnet152": 152}
NUM_CLASSES = 10
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # official.vision.ops.preprocess_ops
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# ----------------------------------------------------------------------------------- data
def synthetic_batch(batch_size, image_size, max_boxes, seed=0):
    """digit_scenes-like batch: 1..6 boxes per image, longer side 24..64 px, -1 padded."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    boxes = -np.ones((batch_size, max_boxes, 4), np.float32)
    classes = -np.ones((batch_size, max_boxes), np.float32)
    for b in range(batch_size):
        for i in range(rng.randint(1, 7)):
            long_side = rng.uniform(24, 64)
            short = long_side * rng.uniform(0.5, 1.0)
            w, h = (long_side, short) if rng.rand() < 0.5 else (short, long_side)
            x0 = rng.uniform(0, image_size - w)
            y0 = rng.uniform(0, image_size - h)
            boxes[b, i] = (x0, y0, x0 + w, y0 + h)
            classes[b, i] = rng.randint(0, NUM_CLASSES)
    return images, {"boxes": boxes, "classes": classes}


def digit_scenes_batch(batch_size, image_size, max_boxes):
    """The first `batch_size` digit_scenes/detection train examples (eval preprocessing)."""
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import sources
    examples = sources.load("digit_scenes/detection", "train")
    model_examples = pipelines.preprocess(examples, "detection", image_size=image_size,
                                          training=False, max_boxes=max_boxes)
    batch = next(iter(model_examples.batch(batch_size)))
    images, targets = pipelines.split_inputs(batch, "detection")
    return (images.numpy().astype(np.float32),
            {"boxes": targets["boxes"].numpy().astype(np.float32),
             "classes": targets["classes"].numpy().astype(np.float32)})


def load_batch(args):
    if args.data == "digit_scenes":
        try:
            return digit_scenes_batch(args.batch_size, args.image_size, args.max_boxes), \
                "digit_scenes/detection train[:batch] (eval resize, no augmentation)"
        except Exception as e:  # pylint: disable=broad-except
            print(f"digit_scenes unavailable ({type(e).__name__}: {e}); using synthetic boxes",
                  file=sys.stderr)
    return synthetic_batch(args.batch_size, args.image_size, args.max_boxes), \
        "synthetic (uniform noise images, 1..6 boxes of 24..64 px per image)"


# ------------------------------------------------------------------------------------ ours
class Ours:
    name = "ours"

    def __init__(self, args, images, targets):
        import keras  # pylint: disable=g-import-not-at-top
        from rethink_tf.models import detector
        from rethink_tf.training import optimizer as optimizer_lib
        self.detector_lib = detector
        self.batch_size = args.batch_size
        keras.utils.set_random_seed(0)
        self.model = detector.build_detector(
            args.backbone, NUM_CLASSES, args.image_size, max_level=args.max_level,
            anchor_sizes=tuple(args.anchor_sizes), fpn_filters=args.fpn_filters,
            head_filters=args.head_filters, head_depth=args.head_depth)
        self.model.compile(optimizer=optimizer_lib.SGDL2(learning_rate=0.01, momentum=0.9),
                           box_loss="smoothl1", classification_loss="focal",
                           jit_compile=args.xla)
        self.images = tf.constant(images)
        self.targets = {k: tf.constant(v) for k, v in targets.items()}
        self.dataset = tf.data.Dataset.from_tensors((self.images, self.targets)).repeat()
        if args.encode == "pipeline":
            # `train.encode_targets=pipeline`: every batch's anchor targets encoded in tf.data.
            encode = detector.pipeline_target_encoder(detector.build_label_encoder(
                max_level=args.max_level, anchor_sizes=tuple(args.anchor_sizes)))
            self.dataset = self.dataset.map(lambda x, y: (x, encode(x, y))).prefetch(2)
        self.model(self.images[:1], training=False)  # build

    def num_anchors(self):
        return int(self.detector_lib.encode_detection_targets(
            self.model, self.images[:1], {k: v[:1] for k, v in self.targets.items()})[1]
            .shape[1])

    def param_counts(self):
        m = self.model
        count = lambda layer: int(sum(np.prod(v.shape) for v in layer.weights))  # noqa: E731
        return {"total": count(m), "trainable": int(sum(np.prod(v.shape)
                                                        for v in m.trainable_weights)),
                "backbone": count(m.backbone), "fpn": count(m.feature_pyramid),
                "heads": count(m.classification_head) + count(m.box_head)}

    def run(self, steps, between):
        """ONE `model.fit` over all of `steps` (chunk lengths), as the trainer trains.

        After each chunk a callback waits for the step's result, then calls `between(i)`
        (the other side's chunks, inside the fit) and restarts the clock, so each chunk's time
        is this side's alone, with fit's per-step work but its per-call set-up only once.
        Returns the seconds of each chunk (the first one includes the call's set-up).
        """
        import keras  # pylint: disable=g-import-not-at-top
        ends = np.cumsum(steps).tolist()
        seconds, clock, side = [], [time.perf_counter()], self

        class Alternate(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch + 1 != ends[len(seconds)]:
                    return
                side.last_loss = float(logs["loss"])  # waits for the step
                seconds.append(time.perf_counter() - clock[0])
                between(len(seconds) - 1)
                clock[0] = time.perf_counter()

        self.model.fit(self.dataset, steps_per_epoch=int(ends[-1]), epochs=1, verbose=0,
                       callbacks=[Alternate()])
        return seconds

    # Parts of a step, for --profile (same computation as train_step, split up).
    def parts(self):
        model, det = self.model, self.detector_lib
        images, targets = self.images, self.targets

        @tf.function
        def encode():
            return det.encode_detection_targets(model, images, targets)

        @tf.function
        def forward():
            return model(images, training=True)

        @tf.function
        def forward_loss():
            y_pred = model(images, training=True)
            return model.compute_loss(images, targets, y_pred)

        @tf.function
        def forward_loss_backward():
            with tf.GradientTape() as tape:
                y_pred = model(images, training=True)
                loss = model.compute_loss(images, targets, y_pred)
            return tape.gradient(loss, model.trainable_variables)

        return {"label_encoding": encode, "forward": forward, "forward+loss": forward_loss,
                "forward+loss+backward": forward_loss_backward}


# ------------------------------------------------------------------------------------ peer
class Peer:
    name = "peer"

    def __init__(self, args, images, targets):
        import tf_keras  # pylint: disable=g-import-not-at-top
        from official.vision.configs import backbones as backbones_cfg
        from official.vision.configs import common as common_cfg
        from official.vision.configs import decoders as decoders_cfg
        from official.vision.configs import retinanet as retinanet_cfg
        from official.vision.losses import focal_loss
        from official.vision.modeling import factory
        from official.vision.ops import anchor as anchor_lib

        if args.backbone not in PEER_RESNET_IDS:
            raise ValueError(f"--backbone={args.backbone}: the peer has ResNet "
                             f"{sorted(PEER_RESNET_IDS)} only")
        strides = [2 ** level for level in range(3, args.max_level + 1)]
        anchor_size = args.anchor_sizes[0] / strides[0]
        if any(abs(s / st - anchor_size) > 1e-6 for s, st in zip(args.anchor_sizes, strides)):
            raise ValueError("official Anchor needs anchor_size proportional to the stride; "
                             f"got sizes {args.anchor_sizes} for strides {strides}")
        tf_keras.utils.set_random_seed(0)
        self.batch_size = args.batch_size
        self.config = retinanet_cfg.RetinaNet(
            num_classes=NUM_CLASSES,  # classes 0..9, background = all-zero one-hot (see doc)
            input_size=[args.image_size, args.image_size, 3],
            min_level=3, max_level=args.max_level,
            anchor=retinanet_cfg.Anchor(num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                                        anchor_size=anchor_size),
            backbone=backbones_cfg.Backbone(
                type="resnet", resnet=backbones_cfg.ResNet(model_id=PEER_RESNET_IDS[
                    args.backbone])),
            decoder=decoders_cfg.Decoder(type="fpn",
                                         fpn=decoders_cfg.FPN(num_filters=args.fpn_filters)),
            head=retinanet_cfg.RetinaNetHead(num_convs=args.head_depth,
                                             num_filters=args.head_filters),
            norm_activation=common_cfg.NormActivation(activation="relu", use_sync_bn=False,
                                                      norm_momentum=0.99,
                                                      norm_epsilon=0.001))
        input_specs = tf_keras.layers.InputSpec(shape=[None, args.image_size, args.image_size,
                                                       3])
        self.model = factory.build_retinanet(input_specs, self.config, l2_regularizer=None)
        self.optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
        self.anchor_boxes = anchor_lib.Anchor(
            min_level=3, max_level=args.max_level, num_scales=3,
            aspect_ratios=[0.5, 1.0, 2.0], anchor_size=anchor_size,
            image_size=[args.image_size, args.image_size]).multilevel_boxes
        # Ours: positive IoU >= 0.5, ignored 0.4..0.5, box variance (0.1, 0.1, 0.2, 0.2),
        # i.e. coder weights (10, 10, 5, 5).
        self.labeler = anchor_lib.AnchorLabeler(match_threshold=0.5, unmatched_threshold=0.4,
                                                box_coder_weights=[10.0, 10.0, 5.0, 5.0])
        self.cls_loss_fn = focal_loss.FocalLoss(alpha=0.25, gamma=2.0,
                                                reduction=tf_keras.losses.Reduction.SUM)
        self.box_loss_fn = tf_keras.losses.Huber(1.0, reduction=tf_keras.losses.Reduction.SUM)
        self.box_loss_weight = 1.0
        self.images = tf.constant(images)
        self.targets = {k: tf.constant(v) for k, v in targets.items()}
        self.dataset = tf.data.Dataset.from_tensors((self.images, self.targets)).repeat()
        self.encode_in_pipeline = args.encode == "pipeline"
        if self.encode_in_pipeline:
            # As the official parser: labels computed in tf.data, the step only reads them.
            self.dataset = self.dataset.map(lambda x, y: (x, self.label(y))).prefetch(2)
        self.iterator = iter(self.dataset)
        self._train_step = tf.function(self._step)

    def num_anchors(self):
        return int(sum(np.prod(a.shape) // 4 for a in self.anchor_boxes.values()))

    def param_counts(self):
        m = self.model
        count = lambda layer: int(sum(np.prod(v.shape) for v in layer.weights))  # noqa: E731
        return {"total": count(m), "trainable": int(sum(np.prod(v.shape)
                                                        for v in m.trainable_weights)),
                "backbone": count(m.backbone), "fpn": count(m.decoder), "heads": count(m.head)}

    # The official RetinaNet parser (dataloaders/retinanet_input.py) labels each image on its
    # own, after dropping padding; done here inside the step, per image, as ours does.
    def label(self, targets):
        cls_targets, box_targets, cls_weights, box_weights = [], [], [], []
        for b in range(self.batch_size):
            valid = targets["classes"][b] >= 0
            xyxy = tf.boolean_mask(targets["boxes"][b], valid)
            yxyx = tf.gather(xyxy, [1, 0, 3, 2], axis=-1)
            labels = tf.cast(tf.boolean_mask(targets["classes"][b], valid), tf.int32)
            c, bx, _, cw, bw = self.labeler.label_anchors(self.anchor_boxes, yxyx,
                                                          labels[:, None])
            cls_targets.append(c)
            box_targets.append(bx)
            cls_weights.append(cw)
            box_weights.append(bw)
        stack = lambda dicts: {k: tf.stack([d[k] for d in dicts]) for k in dicts[0]}  # noqa
        return {"cls_targets": stack(cls_targets), "box_targets": stack(box_targets),
                "cls_weights": tf.stack(cls_weights), "box_weights": tf.stack(box_weights)}

    def preprocess(self, images):
        return (images - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)

    # official.vision.tasks.retinanet.RetinaNetTask.build_losses (no attribute heads).
    def losses(self, outputs, labels):
        from official.vision.losses import loss_utils  # pylint: disable=g-import-not-at-top
        cls_w = labels["cls_weights"]
        box_w = labels["box_weights"]
        num_positives = tf.reduce_sum(box_w) + 1.0
        y_true_cls = tf.one_hot(loss_utils.multi_level_flatten(labels["cls_targets"],
                                                               last_dim=None), NUM_CLASSES)
        y_pred_cls = loss_utils.multi_level_flatten(outputs["cls_outputs"],
                                                    last_dim=NUM_CLASSES)
        y_true_box = loss_utils.multi_level_flatten(labels["box_targets"], last_dim=4)
        y_pred_box = loss_utils.multi_level_flatten(outputs["box_outputs"], last_dim=4)
        cls_loss = self.cls_loss_fn(y_true=y_true_cls, y_pred=y_pred_cls,
                                    sample_weight=cls_w / num_positives)
        box_loss = self.box_loss_fn(y_true=y_true_box, y_pred=y_pred_box,
                                    sample_weight=box_w / num_positives)
        return cls_loss + self.box_loss_weight * box_loss

    # official.vision.tasks.retinanet.RetinaNetTask.train_step (one replica, float32).
    def _step(self, batch):
        images, targets = batch
        labels = targets if self.encode_in_pipeline else self.label(targets)
        with tf.GradientTape() as tape:
            outputs = self.model(self.preprocess(images), training=True)
            outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
            loss = self.losses(outputs, labels)
            if self.model.losses:
                loss += tf.reduce_sum(self.model.losses)
        tvars = self.model.trainable_variables
        grads = tape.gradient(loss, tvars)
        self.optimizer.apply_gradients(list(zip(grads, tvars)))
        return loss

    def train(self, steps):
        start = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = self._train_step(next(self.iterator))
        self.last_loss = float(loss)  # waits for the last step
        return time.perf_counter() - start

    def parts(self):
        images, targets, model = self.images, self.targets, self.model

        @tf.function
        def encode():
            return self.label(targets)

        @tf.function
        def forward():
            return model(self.preprocess(images), training=True)

        @tf.function
        def forward_loss():
            labels = self.label(targets)
            return self.losses(model(self.preprocess(images), training=True), labels)

        @tf.function
        def forward_loss_backward():
            labels = self.label(targets)
            with tf.GradientTape() as tape:
                loss = self.losses(model(self.preprocess(images), training=True), labels)
            return tape.gradient(loss, model.trainable_variables)

        return {"label_encoding": encode, "forward": forward, "forward+loss": forward_loss,
                "forward+loss+backward": forward_loss_backward}


# ------------------------------------------------------------------------------ measurement
def _sync(result):
    for t in tf.nest.flatten(result):
        t.numpy()


def _load():
    return os.getloadavg()


def measure(ours, peer, args):
    """Warm-up, then `repeats` rounds of `steps` steps per side.

    Within a round the sides alternate in chunks of `--chunk` steps (ours, peer, ours, ...,
    the first side swapped every round), so load changes on this shared machine hit both
    alike; a side's round time is the sum of its chunks. Ours trains as `trainer.train` does,
    in one `model.fit` call, the peer's chunks running inside it between ours' (`Ours.run`).
    """
    chunk = max(1, min(args.chunk or args.steps, args.steps))
    plan = [("warmup", ours.name, args.warmup), ("warmup", peer.name, args.warmup)]
    for r in range(args.repeats):
        order = (ours, peer) if r % 2 == 0 else (peer, ours)
        for start in range(0, args.steps, chunk):
            plan += [(r, side.name, min(chunk, args.steps - start)) for side in order]
    ours_items = [i for i, item in enumerate(plan) if item[1] == ours.name]
    seconds, loads = {}, {}

    def run_peer(items):
        for i in items:
            loads[i] = _load()[0]
            seconds[i] = peer.train(plan[i][2])

    def between(k):  # after ours' k-th chunk: the peer's chunks up to ours' next one
        stop = ours_items[k + 1] if k + 1 < len(ours_items) else len(plan)
        run_peer(range(ours_items[k] + 1, stop))
        if k + 1 < len(ours_items):
            loads[ours_items[k + 1]] = _load()[0]

    run_peer(range(0, ours_items[0]))
    loads[ours_items[0]] = _load()[0]
    for i, t in zip(ours_items, ours.run([plan[i][2] for i in ours_items], between)):
        seconds[i] = t
    for side in (ours, peer):
        warm = next(i for i, item in enumerate(plan) if item[:2] == ("warmup", side.name))
        print(f"  warm-up {side.name}: {args.warmup} steps in {seconds[warm]:.1f} s", flush=True)
    rounds = []
    for r in range(args.repeats):
        items = [i for i, item in enumerate(plan) if item[0] == r]
        first = plan[items[0]][1]
        for name in (first, ours.name if first == peer.name else peer.name):
            own = [i for i in items if plan[i][1] == name]
            total = sum(seconds[i] for i in own)
            ips = args.steps * args.batch_size / total
            load = float(np.mean([loads[i] for i in items]))
            rounds.append({"round": r, "side": name, "seconds": total, "images_per_s": ips,
                           "load1_mean": load})
            print(f"  round {r} {name}: {ips:6.2f} img/s ({total:.2f} s, load {load:.2f})",
                  flush=True)
    return rounds


def profile(sides, args):
    """Median seconds of each part of a step, both sides alternating per repetition."""
    fns = {side.name: side.parts() for side in sides}
    names = list(next(iter(fns.values())))
    for side in sides:  # trace
        for name in names:
            _sync(fns[side.name][name]())
    times = {side.name: {name: [] for name in names} for side in sides}
    for r in range(args.profile_repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        for name in names:
            for side in order:
                start = time.perf_counter()
                for _ in range(args.profile_steps):
                    _sync(fns[side.name][name]())
                times[side.name][name].append((time.perf_counter() - start)
                                              / args.profile_steps)
    return {s: {n: statistics.median(v) for n, v in d.items()} for s, d in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--chunk", type=int, default=5,
                   help="alternate the sides every CHUNK steps within a round (0: whole round)")
    p.add_argument("--max_level", type=int, default=5)
    p.add_argument("--anchor_sizes", type=float, nargs="+", default=[16.0, 32.0, 64.0])
    # Defaults of experiments/configs/detection.py (rethink_tf.training.config.base_config).
    p.add_argument("--fpn_filters", type=int, default=64)
    p.add_argument("--head_filters", type=int, default=64)
    p.add_argument("--head_depth", type=int, default=2)
    p.add_argument("--max_boxes", type=int, default=100)
    p.add_argument("--data", choices=["digit_scenes", "synthetic"], default="digit_scenes")
    p.add_argument("--xla", action="store_true", help="jit_compile both train steps")
    p.add_argument("--encode", choices=["step", "pipeline"], default="step",
                   help="where both sides encode anchor targets: inside the train step, or "
                        "in tf.data (ours: train.encode_targets=pipeline; the peer: its "
                        "labeler in a dataset map, as its parser does)")
    p.add_argument("--profile", action="store_true",
                   help="also time label encoding / forward / loss / backward on both sides")
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--profile_repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.max_level != 2 + len(args.anchor_sizes):
        p.error("--anchor_sizes needs one size per level P3..P<max_level>")

    print(f"TF {tf.__version__}; load average at start {_load()}", flush=True)
    (images, targets), data_desc = load_batch(args)
    n_boxes = int((targets["classes"] >= 0).sum())
    print(f"data: {data_desc}; {n_boxes} boxes in the batch", flush=True)

    ours = Ours(args, images, targets)
    peer = Peer(args, images, targets)
    if args.xla:
        peer._train_step = tf.function(peer._step, jit_compile=True)  # pylint: disable=protected-access
    sides = [ours, peer]
    info = {s.name: {"params": s.param_counts(), "anchors_per_image": s.num_anchors()}
            for s in sides}
    for name, d in info.items():
        print(f"{name}: params {d['params']}, anchors/image {d['anchors_per_image']}",
              flush=True)

    rounds = measure(ours, peer, args)
    summary = {}
    for side in sides:
        values = [r["images_per_s"] for r in rounds if r["side"] == side.name]
        summary[side.name] = {"median_images_per_s": statistics.median(values),
                              "all_images_per_s": values}
    ratio = summary["ours"]["median_images_per_s"] / summary["peer"]["median_images_per_s"]
    per_round = [a["images_per_s"] / b["images_per_s"]
                 for r in range(args.repeats)
                 for a in rounds if a["round"] == r and a["side"] == "ours"
                 for b in rounds if b["round"] == r and b["side"] == "peer"]
    parts = profile(sides, args) if args.profile else None

    print()
    print(f"| side | params | anchors/img | images/s (median of {args.repeats}) | all rounds |")
    print("|---|---|---|---|---|")
    for side in sides:
        s = summary[side.name]
        print(f"| {side.name} | {info[side.name]['params']['total']:,} | "
              f"{info[side.name]['anchors_per_image']} | {s['median_images_per_s']:.2f} | "
              + ", ".join(f"{v:.2f}" for v in s["all_images_per_s"]) + " |")
    print(f"\nratio ours/peer (medians): {ratio:.3f}; per round: "
          + ", ".join(f"{v:.3f}" for v in per_round))
    if parts:
        print("\n| part of a step (s, median) | ours | peer | ours/peer time |")
        print("|---|---|---|---|")
        for name in parts["ours"]:
            a, b = parts["ours"][name], parts["peer"][name]
            print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    load_end = _load()
    print(f"\nload average at end {load_end}")
    result = {
        "args": vars(args), "data": data_desc, "boxes_in_batch": n_boxes,
        "tf_version": tf.__version__, "cpu_count": os.cpu_count(),
        "load_average_end": load_end, "models": info, "rounds": rounds,
        "summary": summary, "ratio_ours_over_peer": ratio, "ratio_per_round": per_round,
        "profile_seconds": parts,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
