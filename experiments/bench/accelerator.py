r"""Accelerator benchmark: the numbers to read on whatever devices are present (GPU, TPU, CPU).

  python experiments/bench/accelerator.py [--backbone=resnet50] [--image_size=512] \
      [--batch_size=16] [--steps=20] [--modes=fp32,fp32_xla,mixed,mixed_xla] \
      [--encode=step|pipeline] [--dataset=digit_scenes/detection] [--out=/tmp/accelerator.json]

Measures, on the default device of this process (one GPU/TPU core, or the CPU):
  train      the supervised detection step (`tasks.build_model` + `compile_model`, SGD with
             coupled L2, `model.fit`) in each precision/XLA mode: float32, float32 + XLA
             (`train.xla`, jit_compile), mixed_float16 (`train.mixed_precision`, loss scaling),
             mixed_float16 + XLA. Images/s = timed steps x batch / wall seconds after
             `--warmup` steps (tracing and compilation excluded), within one `fit` call as
             the trainer runs. `--encode=pipeline` encodes the anchor targets in tf.data
             (`train.encode_targets`), off the accelerator's step, for train and student.
  student    the noisy student's step (`student.build_student_model`: human + pseudo batch of
             `--batch_size` each, one forward pass, two losses, loss normalisation) in the
             fastest train mode; images/s counts both streams.
  inference  the teacher's forward pass + box decoding (`model.predict_step`, what
             pseudo-labelling and evaluation run per batch), fastest mode, `--batch_size`.
  pseudo     `rethink_tf.pseudo.labeler.pseudo_label` end to end (decode, forward, NMS, record
             writing) on `--pseudo_images` images of `--dataset`'s `--pseudo_split` ("once
             running": the rate between a run on a quarter of them and on all), teacher =
             a workdir trained `--teacher_steps` steps here, score threshold
             `--pseudo_threshold` (low, so boxes are written as a trained teacher writes them).
  evaluate   `trainer.evaluate_workdir` (COCO AP against the source's ground truth; "its
             loop": batches, predictions and their bookkeeping, without restoring the model,
             loading the ground truth and COCO scoring) on
             `--eval_images` images: images/s of the whole evaluation.
Prints a table and writes JSON (`--out`): device names, TF version, settings, every number.
Training batches are one preloaded synthetic batch (digit_scenes-like boxes) repeated, so the
input pipeline is not measured; pseudo-labelling and evaluation read the real source.

On this project's 2-core CPU it runs at a tiny size in the tests (`--tiny`); on a GPU use the
paper-like sizes above (see BUILD.md for what to pick).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

MODES = {"fp32": (False, False), "fp32_xla": (False, True), "mixed": (True, False),
         "mixed_xla": (True, True)}
NUM_CLASSES = 10


def synthetic_batch(batch_size, image_size, max_boxes, seed=0):
    """A digit_scenes-like batch: 1..6 boxes per image (sides 3/16..1/2 of the image)."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    boxes = -np.ones((batch_size, max_boxes, 4), np.float32)
    classes = -np.ones((batch_size, max_boxes), np.float32)
    for b in range(batch_size):
        for i in range(rng.randint(1, min(7, max_boxes + 1))):
            side = rng.uniform(3 / 16, 1 / 2) * image_size
            x0, y0 = rng.uniform(0, image_size - side, 2)
            boxes[b, i] = (x0, y0, x0 + side, y0 + side * rng.uniform(0.6, 1.0))
            classes[b, i] = rng.randint(0, NUM_CLASSES)
    return images, {"boxes": boxes, "classes": classes}


def make_config(args, mixed=False, xla=False):
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    c = config_lib.base_config("detection")
    c.dataset.name = args.dataset
    c.dataset.data_dir = args.data_dir
    c.dataset.image_size = args.image_size
    c.model.backbone = args.backbone
    c.train.batch_size = args.batch_size
    c.train.mixed_precision = mixed
    c.train.xla = xla
    c.train.encode_targets = args.encode
    c.train.warmup_steps = 0
    c.train.verbose = 0
    c.eval.num_images = args.eval_images
    c.eval.batch_size = args.batch_size
    c.eval.tb_images = 0
    if args.tiny:
        c.model.anchor_sizes = (16.0, 32.0, 64.0)
        c.model.max_level = 5
        for field in ("fpn_filters", "head_filters"):
            c.model[field] = 8
        c.model.head_depth = 1
        c.dataset.shuffle_buffer = 16
    return c


def _build(config, student=False):
    import keras  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import student as student_lib  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    trainer._setup(config)  # pylint: disable=protected-access  (seed, policy, fresh Keras state)
    model = (student_lib.build_student_model(config, NUM_CLASSES) if student
             else tasks.build_model(config, NUM_CLASSES))
    tasks.compile_model(model, config, optimizer_lib.build_optimizer(config.train))
    del keras
    return model


def _timed_fit(model, data, steps, warmup):
    """Seconds of `steps` steps after `warmup` ones, in ONE `fit` call as the trainer trains
    (a second call would add fit's per-call set-up, ~1 s on a CPU, to the timed steps)."""
    import keras  # pylint: disable=g-import-not-at-top
    marks = {}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 in (warmup, warmup + steps):
                marks["loss"] = float(logs["loss"])  # waits for the step
                marks[batch + 1] = time.perf_counter()

    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[Clock()])
    if not np.isfinite(marks["loss"]):
        raise RuntimeError(f"non-finite loss {marks['loss']} while timing")
    return marks[warmup + steps] - marks[warmup]


def _encoded(config, data, streams=False):
    """`data` with anchor targets encoded in tf.data when `train.encode_targets=pipeline`
    (every batch encoded again, as in training); `streams`: batches of named streams."""
    from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
    encode = tasks.target_encoder(config)
    if encode is None:
        return data
    if streams:
        return data.map(lambda b: {name: (x, encode(x, y)) for name, (x, y) in b.items()})
    return data.map(lambda x, y: (x, encode(x, y)))


def bench_train(args, mode, batch):
    mixed, xla = MODES[mode]
    config = make_config(args, mixed, xla)
    model = _build(config)
    images, targets = batch
    data = _encoded(config, tf.data.Dataset.from_tensors((images, targets)).repeat())
    seconds = _timed_fit(model, data, args.steps, args.warmup)
    return {"images_per_s": args.steps * args.batch_size / seconds, "seconds": seconds}


def bench_student(args, mode, batch):
    mixed, xla = MODES[mode]
    config = make_config(args, mixed, xla)
    model = _build(config, student=True)
    images, targets = batch
    data = _encoded(config, tf.data.Dataset.from_tensors(
        {"human": (images, targets), "pseudo": (images[::-1], {
            k: v[::-1] for k, v in targets.items()})}).repeat(), streams=True)
    seconds = _timed_fit(model, data, args.steps, args.warmup)
    return {"images_per_s": 2 * args.steps * args.batch_size / seconds, "seconds": seconds}


def bench_inference(args, mode, batch):
    mixed, xla = MODES[mode]
    model = _build(make_config(args, mixed, xla))
    images = tf.constant(batch[0])
    step = tf.function(lambda x: model.predict_step(x), jit_compile=False)
    for _ in range(args.warmup):
        out = step(images)
    _ = [v.numpy() for v in tf.nest.flatten(out)]
    start = time.perf_counter()
    for _ in range(args.steps):
        out = step(images)
    _ = [v.numpy() for v in tf.nest.flatten(out)]
    seconds = time.perf_counter() - start
    return {"images_per_s": args.steps * args.batch_size / seconds, "seconds": seconds}


def bench_pseudo_and_eval(args, mode, root):
    """Trains a teacher workdir briefly, then times pseudo-labelling and evaluation."""
    from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    mixed, xla = MODES[mode]
    config = make_config(args, mixed, xla)
    config.train.steps = args.teacher_steps
    config.train.checkpoint_every = args.teacher_steps
    config.train.eval_every = 0
    workdir = os.path.join(root, "teacher")
    trainer.train(config, workdir)
    out = {}
    # Two runs, a quarter and all of the images: their difference is the labelling rate once
    # running (loading the teacher, tracing and filling the pipeline cancel out).
    runs = {}
    for images in sorted({max(1, args.pseudo_images // 4), args.pseudo_images}):
        start = time.perf_counter()
        manifest = labeler.pseudo_label(
            workdir, args.dataset, os.path.join(root, f"pseudo_{images}"),
            split=f"{args.pseudo_split}[:{images}]", data_dir=args.data_dir or None,
            score_threshold=args.pseudo_threshold, batch_size=args.batch_size, progress=False)
        runs[images] = (time.perf_counter() - start, manifest)
    seconds, manifest = runs[args.pseudo_images]
    out["pseudo"] = {"images_per_s": manifest["num_images"] / seconds, "seconds": seconds,
                     "num_images": manifest["num_images"],
                     "boxes_per_image": manifest.get("boxes_per_image")}
    if len(runs) == 2:
        (n_small, (t_small, _)), (n_large, (t_large, _)) = sorted(runs.items())
        out["pseudo"]["marginal_images_per_s"] = (n_large - n_small) / max(t_large - t_small,
                                                                            1e-9)
    start = time.perf_counter()
    metrics = trainer.evaluate_workdir(workdir, checkpoint="latest",
                                       num_images=args.eval_images)
    seconds = time.perf_counter() - start
    # Whole: restoring the model, tracing, the ground truth, the loop, COCO scoring. Loop:
    # batches in, predictions (score >= 0.05, up to 100 per image) out and added for scoring.
    out["evaluate"] = {"images_per_s": metrics["num_images"] / seconds, "seconds": seconds,
                       "num_images": metrics["num_images"],
                       "loop_images_per_s": metrics.get("images_per_s")}
    return out


def devices():
    return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()
            if d.device_type != "CPU"] or ["CPU"]


def table(results):
    lines = [f"{'measure':<22} {'images/s':>10}", "-" * 33]
    extra = {"marginal_images_per_s": "once running", "loop_images_per_s": "its loop"}
    for name, value in results.items():
        if isinstance(value, dict) and "images_per_s" in value:
            lines.append(f"{name:<22} {value['images_per_s']:>10.1f}")
            for key, what in extra.items():
                if value.get(key):
                    lines.append(f"{'  ' + what:<22} {value[key]:>10.1f}")
        elif isinstance(value, dict) and "error" in value:
            lines.append(f"{name:<22} {'failed':>10}  {value['error'][:60]}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image_size", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default="fp32,fp32_xla,mixed,mixed_xla")
    p.add_argument("--dataset", default="digit_scenes/detection")
    p.add_argument("--data_dir", default="")
    p.add_argument("--teacher_steps", type=int, default=50)
    p.add_argument("--pseudo_split", default="unlabeled")
    p.add_argument("--pseudo_images", type=int, default=1000)
    p.add_argument("--pseudo_threshold", type=float, default=0.05)
    p.add_argument("--eval_images", type=int, default=500)
    p.add_argument("--skip", default="", help="comma list of: student,inference,pseudo")
    p.add_argument("--tiny", action="store_true", help="tiny heads (the tests' size)")
    p.add_argument("--encode", choices=["step", "pipeline"], default="step",
                   help="train.encode_targets: anchor targets in the step or in tf.data")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"--modes: unknown {unknown}; known: {sorted(MODES)}")
    skip = set(filter(None, args.skip.split(",")))
    batch = synthetic_batch(args.batch_size, args.image_size, 100)
    results = {}
    for mode in modes:
        try:
            results[f"train_{mode}"] = bench_train(args, mode, batch)
        except Exception as e:  # noqa: BLE001  (a mode a device lacks is a result, not a crash)
            results[f"train_{mode}"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"train {mode}: {results[f'train_{mode}']}", flush=True)
    timed = {m: results[f"train_{m}"]["images_per_s"] for m in modes
             if "images_per_s" in results[f"train_{m}"]}
    if not timed:
        raise SystemExit("no train mode ran; see the errors above")
    best = max(timed, key=timed.get)
    if "student" not in skip:
        results[f"student_{best}"] = bench_student(args, best, batch)
        results["student_over_supervised_time_per_image"] = (
            timed[best] / results[f"student_{best}"]["images_per_s"])
    if "inference" not in skip:
        results[f"inference_{best}"] = bench_inference(args, best, batch)
    if "pseudo" not in skip:
        with tempfile.TemporaryDirectory() as root:
            for name, value in bench_pseudo_and_eval(args, best, root).items():
                results[f"{name}_{best}"] = value
    record = {"devices": devices(), "tensorflow": tf.__version__, "settings": vars(args),
              "fastest_train_mode": best, "results": results}
    print(f"devices: {', '.join(record['devices'])}; TF {tf.__version__}; fastest train mode: "
          f"{best}\n{table(results)}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2, default=float)
    return record


if __name__ == "__main__":
    main()
