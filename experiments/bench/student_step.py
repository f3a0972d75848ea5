r"""Benchmark: the noisy student's training step against the supervised step, per image.

  python experiments/bench/student_step.py [--task=detection|segmentation] \
      [--kind=student|joint] [--backbone=resnet_small] [--image_size=128] [--batch_size=8] \
      [--ratio=1.0] [--steps=20] [--repeats=3] [--chunk=5] [--out=/tmp/student_step.json]

Both models are built by the library exactly as training builds them (`tasks.build_model` from
the task's base config, compiled by `tasks.compile_model` with `optimizer.build_optimizer`), one
as a plain task model and one as the student (`student.build_student_model`: same
architecture, the student `train_step` with two losses and loss normalisation). Each trains on
one preloaded batch of real `digit_scenes/detection` train images (eval resize, no
augmentation, so the input pipeline costs nothing), repeated:

* supervised: `model.fit` on batches of `batch_size * (1 + ratio)` images;
* student: `model.fit` on named streams of `batch_size` human + `batch_size * ratio` pseudo images
  (the first and second part of the same images), i.e. the same images per step.

`--kind=joint`: the second side is joint training with all three streams instead
(`joint.build_joint_model`, `config.joint_training`'s defaults: 8 images of
`digit_scenes/classification` at 64 px per step beside the same human + pseudo images); its
time per image counts the target task's images only, so the classification stream's cost is in
it.

The time per image of each is wall seconds / (steps x images per step); the goal is a student
(and a joint step) at <= 1.05x the supervised time per image. The sides alternate every `--chunk` steps within a
round (the first side swapped each round) so machine load hits both alike; medians over rounds.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=UserWarning)

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def build_config(args):
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    c = config_lib.base_config(args.task)
    if args.dataset:
        c.dataset.name = args.dataset
    c.dataset.data_dir = args.data_dir
    c.model.backbone = args.backbone
    c.dataset.image_size = args.image_size
    c.train.batch_size = args.batch_size
    c.self_training.ratio = args.ratio
    c.model.drop_path_rate = args.drop_path_rate
    return c


def preloaded_batch(config, images_per_step):
    """`images_per_step` digit_scenes train examples as (images, targets), eval preprocessing."""
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import tasks
    info = tasks.dataset_info(config)
    examples = tasks.load_examples(config, "train")
    model_examples = pipelines.preprocess(
        examples, config.task, image_size=config.dataset.image_size, training=False,
        max_boxes=config.dataset.max_boxes, mask_class_offset=tasks.mask_class_offset(info))
    batch = next(iter(model_examples.batch(images_per_step)))
    images, targets = pipelines.split_inputs(batch, config.task)
    return info, images, targets


def build(config, info, kind):
    import keras  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import joint as joint_lib
    from rethink_tf.training import optimizer as optimizer_lib
    from rethink_tf.training import student as student_lib
    from rethink_tf.training import tasks
    keras.utils.set_random_seed(0)
    n = tasks.num_classes(config, info)
    builders = {"supervised": tasks.build_model, "student": student_lib.build_student_model,
                "joint": joint_lib.build_joint_model}
    model = builders[kind](config, n)
    return tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))


def classification_batch(config):
    """`joint.batch_size` images of `joint.dataset` at `joint.image_size` with their labels."""
    from rethink_tf.data import pipelines  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import tasks
    examples = tasks.classification_examples(config).take(int(config.joint.batch_size))
    batch = next(iter(examples.batch(int(config.joint.batch_size))))
    return pipelines.split_inputs(batch, "classification")


def slice_targets(targets, start, stop):
    return tf.nest.map_structure(lambda t: t[start:stop], targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="detection", choices=["detection", "segmentation"])
    parser.add_argument("--kind", default="student", choices=["student", "joint"],
                        help="the step compared with the supervised one")
    parser.add_argument("--dataset", default="", help="default: the task config's")
    parser.add_argument("--data_dir", default="", help="TFDS data dir")
    parser.add_argument("--joint_dataset", default="digit_scenes/classification",
                        help="--kind=joint: the classification stream's source")
    parser.add_argument("--backbone", default="resnet_small")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8, help="human images per step")
    parser.add_argument("--ratio", type=float, default=1.0, help="pseudo:human images")
    parser.add_argument("--drop_path_rate", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.steps % args.chunk:
        parser.error(f"--steps ({args.steps}) must be a multiple of --chunk ({args.chunk})")

    config = build_config(args)
    if args.kind == "joint":
        from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
        config_lib.joint_training(config, dataset=args.joint_dataset)
        config.self_training.pseudo_labels = "/unused"  # the pseudo stream's weight (preloaded)
    human = args.batch_size
    pseudo = int(round(args.batch_size * args.ratio))
    per_step = human + pseudo
    info, images, targets = preloaded_batch(config, per_step)
    if int(images.shape[0]) < per_step:
        raise SystemExit(f"the train split has only {images.shape[0]} images, need {per_step}")
    supervised_data = tf.data.Dataset.from_tensors((images, targets)).repeat()
    student_data = tf.data.Dataset.from_tensors(
        {"human": (images[:human], slice_targets(targets, 0, human)),
         "pseudo": (images[human:], slice_targets(targets, human, per_step))}).repeat()
    if args.kind == "joint":
        classification = classification_batch(config)
        student_data = student_data.map(lambda b: {**b, "classification": classification})
    sides = {"supervised": (build(config, info, "supervised"), supervised_data),
             args.kind: (build(config, info, args.kind), student_data)}
    for model, data in sides.values():
        model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0)

    seconds = {name: [] for name in sides}
    order = list(sides)
    for r in range(args.repeats):
        totals = {name: 0.0 for name in sides}
        names = order if r % 2 == 0 else order[::-1]
        for _ in range(args.steps // args.chunk):
            for name in names:
                model, data = sides[name]
                start = time.perf_counter()
                model.fit(data, steps_per_epoch=args.chunk, epochs=1, verbose=0)
                totals[name] += time.perf_counter() - start
        load = os.getloadavg()[0]
        for name in sides:
            seconds[name].append(totals[name])
        print(f"round {r + 1}: " + ", ".join(
            f"{n} {1e3 * totals[n] / (args.steps * per_step):.2f} ms/image" for n in sides) +
            f" (load {load:.1f})", flush=True)

    ms = {n: [1e3 * s / (args.steps * per_step) for s in seconds[n]] for n in sides}
    med = {n: statistics.median(v) for n, v in ms.items()}
    ratios = [s / u for s, u in zip(ms[args.kind], ms["supervised"])]
    result = {"args": vars(args), "images_per_step": per_step, "ms_per_image": ms,
              "median_ms_per_image": med, f"ratio_{args.kind}_over_supervised": ratios,
              "median_ratio": statistics.median(ratios), "tf": tf.__version__}
    print(json.dumps(result, indent=2))
    print(f"{args.kind} / supervised time per image: {result['median_ratio']:.3f} "
          f"(goal <= 1.05)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
