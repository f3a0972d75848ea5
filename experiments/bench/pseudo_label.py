r"""Pseudo-labeling benchmark: images/s against the bare model, and peak memory vs data size.

  python experiments/bench/pseudo_label.py --workdir=/tmp/bench_pl [--images=1000,10000] \
      [--teacher=TRAINED_WORKDIR] [--threshold=0.5]

1. The teacher: `--teacher`, a trained detection workdir (`python -m rethink_tf.train`, or a
   study cell), whose boxes pass the threshold and are written as in a real run; without it,
   a workdir with the default detection config's model (`experiments/configs/detection.py`:
   RetinaNet, resnet_small, 128 px) and random weights, which writes (almost) no box.
2. Bare model: the same compiled forward + decode as the teacher on preloaded uint8 tensors
   (no input pipeline, no post-processing, no writing), batch 32, over as many images as the
   largest N, once before and once after the labeling runs (their mean is the reference).
3. Pseudo-labeling: `labeler.pseudo_label` over the first N `digit_scenes/detection`
   `unlabeled` images (read, decode, resize, model, NMS, TFRecord write), batch 32,
   each N in a fresh process, reporting images/s and peak RSS (`ru_maxrss`); with two or
   more N, also the marginal rate between the smallest and the largest run (a run's fixed
   start-up costs cancel) and its ratio to the bare model.
Prints one JSON line per measurement; see PSEUDO.md for results.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _make_teacher(workdir):
    import importlib.util  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import checkpoints
    from rethink_tf.training import config as config_lib
    from rethink_tf.training import optimizer as optimizer_lib
    from rethink_tf.training import tasks
    import keras  # pylint: disable=g-import-not-at-top
    if os.path.exists(os.path.join(workdir, "checkpoints", "checkpoint")):
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                        "detection.py")
    spec = importlib.util.spec_from_file_location("detection_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config_lib.save(config, workdir)
    keras.utils.set_random_seed(0)
    model = tasks.build_model(config, tasks.num_classes(config))
    optimizer = optimizer_lib.build_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    checkpoints.CheckpointManager(workdir, model=model, optimizer=optimizer).save(1)


BARE_BATCHES = 10  # real batches the bare model cycles through


def bare(workdir, num_images, batch_size, threshold):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    from rethink_tf.pseudo import teacher as teacher_lib
    teacher = teacher_lib.load_teacher(workdir)
    teacher.set_score_threshold(threshold)
    teacher._sync_decoder()  # pylint: disable=protected-access
    from rethink_tf.pseudo import labeler
    # The first images the labeling runs read, preloaded at model size (uint8, as the
    # labeler feeds them), cycled: a trained teacher finds as many boxes as when labeling.
    real = [teacher.input_fn(example, False)["teacher/image"].numpy()
            for example in labeler.load_unlabeled("digit_scenes/detection", "unlabeled").take(
                BARE_BATCHES * batch_size)]
    batches_in_memory = [tf.constant(np.stack(real[i:i + batch_size]))
                         for i in range(0, len(real), batch_size)]
    forward = teacher._forward  # pylint: disable=protected-access
    tf.nest.map_structure(lambda t: t.numpy(), forward(batches_in_memory[0]))  # trace, warm up
    batches = max(num_images // batch_size, 1)
    boxes = 0
    start = time.perf_counter()
    for i in range(batches):
        out = tf.nest.map_structure(lambda t: t.numpy(),
                                    forward(batches_in_memory[i % len(batches_in_memory)]))
        boxes += int(np.sum(out["num_detections"])) if "num_detections" in out else 0
    seconds = time.perf_counter() - start
    return {"what": "bare_model", "images": batches * batch_size,
            "images_per_s": batches * batch_size / seconds, "boxes_over_threshold": boxes}


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def label(workdir, output, num_images, batch_size, threshold):
    import shutil  # pylint: disable=g-import-not-at-top
    import threading
    from rethink_tf.pseudo import labeler
    from rethink_tf.pseudo import teacher as teacher_lib
    shutil.rmtree(output, ignore_errors=True)
    teacher = teacher_lib.load_teacher(workdir)
    examples = labeler.load_unlabeled("digit_scenes/detection", "unlabeled").take(num_images)
    # Warm up (trace) on a few images outside the timing, as the bare model is.
    list(teacher.predict_stream(examples.take(batch_size), batch_size=batch_size))
    samples, stop = [], threading.Event()

    def sample():  # RSS over time: a plateau is flat memory, a ramp is a leak
        while not stop.wait(2.0):
            samples.append(round(_rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    manifest = labeler.pseudo_label(teacher, examples, output, score_threshold=threshold,
                                    batch_size=batch_size, progress=False, labeled_counts=None)
    seconds = time.perf_counter() - start
    stop.set()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    deciles = [samples[int(i * (len(samples) - 1) / 10)] for i in range(11)] if samples else []
    return {"what": "pseudo_label", "images": manifest["num_images"],
            "images_per_s": manifest["num_images"] / seconds, "seconds": seconds,
            "peak_rss_mb": rss_mb, "rss_mb_over_time_deciles": deciles,
            "num_boxes": manifest["num_boxes"],
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench_pseudo_label")
    parser.add_argument("--images", default="1000,10000")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--teacher", default="",
                        help="a trained detection workdir (default: random weights)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="pseudo-label score threshold (also the bare model's decoder)")
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    teacher_dir = args.teacher or os.path.join(args.workdir, "teacher")
    if args.teacher and not os.path.exists(os.path.join(args.teacher, "config.json")):
        parser.error(f"--teacher={args.teacher}: not a training workdir (no config.json)")
    if args.child:
        kind, n = args.child.split(":")
        if kind == "bare":
            result = bare(teacher_dir, int(n), args.batch_size, args.threshold)
        else:
            result = label(teacher_dir, os.path.join(args.workdir, f"pseudo_{n}"), int(n),
                           args.batch_size, args.threshold)
        print("RESULT " + json.dumps(result), flush=True)
        return
    os.makedirs(args.workdir, exist_ok=True)
    if not args.teacher:
        _make_teacher(teacher_dir)
    sizes = [int(s) for s in args.images.split(",")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # MALLOC_ARENA_MAX passes through
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    # The bare model as many images as the largest run, before and after the labeling runs
    # (the machine's load drifts; their mean is the reference).
    results = []
    for child in [f"bare:{sizes[-1]}"] + [f"label:{n}" for n in sizes] + [f"bare:{sizes[-1]}"]:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--workdir={args.workdir}",
                              f"--batch_size={args.batch_size}", f"--child={child}",
                              f"--teacher={args.teacher}", f"--threshold={args.threshold}"],
                             capture_output=True, text=True, env=env, cwd=root, check=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
        results.append({**json.loads(line[7:]), "load_average": os.getloadavg()})
        print(json.dumps(results[-1]), flush=True)
    labels = [r for r in results if r["what"] == "pseudo_label"]
    bare_rate = sum(r["images_per_s"] for r in results if r["what"] == "bare_model") / 2
    print(json.dumps({"what": "vs_bare", "bare_images_per_s": bare_rate,
                      **{f"label_{r['images']}": r["images_per_s"] / bare_rate for r in labels}}),
          flush=True)
    if len(labels) >= 2:
        # The rate once running: a run's fixed costs (tracing the input functions, filling the
        # pipeline, writing the manifest) cancel between the smallest and largest run.
        small, large = labels[0], labels[-1]
        rate = (large["images"] - small["images"]) / (large["seconds"] - small["seconds"])
        print(json.dumps({"what": "pseudo_label_marginal", "images_per_s": rate,
                          "vs_bare": rate / bare_rate,
                          "fixed_seconds": small["seconds"] - small["images"] / rate}),
              flush=True)


if __name__ == "__main__":
    main()
