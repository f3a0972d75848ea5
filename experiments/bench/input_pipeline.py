r"""Benchmark: images/s of the Augment-S1..S4 input pipelines against training's consumption.

  python experiments/bench/input_pipeline.py [--sizes=128,640] [--batches=40]

For each policy and output size, the detection pipeline (augment -> pad boxes -> batch 16) runs
over `digit_scenes/detection` examples cached in memory (for 640 px the 128 px scenes are
first upsampled to 640 px, boxes and masks with them, so each op works on COCO-sized images).
Training's consumption is measured in the same process: images/s of the default detection
config's train step on a preloaded batch. The ratio pipeline/training says how many times
faster the input pipeline produces than training consumes (goal for S4 at 128 px: >= 3x); its
inverse is the fraction of a training step's CPU time the input pipeline would cost.
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

_SIZES = flags.DEFINE_list("sizes", ["128", "640"], "Output sizes to measure.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per measurement (after warm-up).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_EXAMPLES = flags.DEFINE_integer("examples", 256, "Distinct examples cached in memory.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "Train steps timed.")
_OUT = flags.DEFINE_string("out", "", "Also write the results as JSON here.")


def _examples(size, n):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    ds = sources.load("digit_scenes/detection", "train").take(n)
    if size > 128:
        factor = size / 128.0

        def upsample(e):
            e = dict(e)
            e["image"] = tf.cast(tf.image.resize(e["image"], [size, size]), tf.uint8)
            e["mask"] = tf.image.resize(e["mask"], [size, size], method="nearest")
            e["boxes"] = e["boxes"] * factor
            return e
        ds = ds.map(upsample)
    return ds.cache()


def pipeline_images_per_s(policy, size, batches, batch_size, examples):
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    ds = pipelines.preprocess(examples.repeat(), "detection", image_size=size, policy=policy,
                              mask_class_offset=1)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(4)
    it = iter(ds)
    for _ in range(5):  # warm-up: tracing, cache fill
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def train_images_per_s(size, steps, batch_size):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import detection  # pylint: disable=g-import-not-at-top
    config = detection.get_config()
    config.dataset.image_size = size
    model = tasks.build_model(config, 10)
    tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
    images = tf.random.uniform([batch_size, size, size, 3], 0, 255)
    boxes = tf.tile(tf.constant([[[8.0, 8.0, 40.0, 48.0], [50.0, 60.0, 90.0, 100.0]]]),
                    [batch_size, 1, 1]) * (size / 128.0)
    targets = {"boxes": boxes, "classes": tf.ones([batch_size, 2])}
    data = tf.data.Dataset.from_tensors((images, targets)).repeat()
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # trace
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores, "
                          f"load {os.getloadavg()[0]:.2f}", "tensorflow": tf.__version__,
               "batch_size": _BATCH_SIZE.value, "pipeline": {}, "train": {}}
    for size_text in _SIZES.value:
        size = int(size_text)
        examples = _examples(size, _EXAMPLES.value)
        train_rate = train_images_per_s(size, _TRAIN_STEPS.value, _BATCH_SIZE.value)
        results["train"][size] = train_rate
        print(f"{size}px  training consumes {train_rate:7.1f} img/s", flush=True)
        for policy in ("s1", "s2", "s3", "s4"):
            rate = pipeline_images_per_s(policy, size, _BATCHES.value, _BATCH_SIZE.value,
                                         examples)
            results["pipeline"][f"{policy}@{size}"] = rate
            print(f"{size}px  {policy}: {rate:7.1f} img/s  = {rate / train_rate:5.2f}x training "
                  f"(input cost {100 * train_rate / rate:5.1f}% of a step)", flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
