r"""Where a detection evaluation's time goes: the whole evaluation, then each part alone.

  python experiments/bench/evaluation_parts.py --workdir=TRAINED_DETECTION_WORKDIR \
      [--images=1000] [--checkpoint=latest] [--ab_rounds=8] \
      [--out=/tmp/evaluation_parts.json]

On the workdir's eval split, first `--images` images, its latest (or best) checkpoint:
  whole_evaluate       `evaluator.evaluate` as the trainer calls it (loop + COCO scoring)
  loop_images_per_s    the loop's own rate, as `evaluate` reports it
  input_only           iterating the evaluation batches (read, decode, resize, batch)
  model_only           the compiled predict function (forward + NMS) on preloaded batches
  originals_only       the ground-truth stream (canonical examples at original size), if used
  bookkeeping          detections to original pixels and into the COCO scorer (Python)
  coco_scoring         pycocotools' evaluate + accumulate + summarize
With --ab_rounds=N, also the whole evaluation N times each way, alternating in this process:
the model one batch ahead of the bookkeeping (`ahead`, as `evaluate` runs with a GPU/TPU) and
the sequential loop (`sequential`, as on a CPU), i.e. `predicted_batches(ahead=True|False)`;
`ab.<way>` has the seconds and the loop's images/s of each round (the AP must be the same).
Seconds each; the predict function is traced before anything is timed. Reads the workdir only
(nothing is written there). Results: experiments/bench/ACCELERATOR.md.
"""

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def measure(workdir, num_images, checkpoint="latest", ab_rounds=0):
    # pylint: disable=protected-access,g-import-not-at-top
    from rethink_tf.evaluation import coco_ap
    from rethink_tf.evaluation import evaluator
    from rethink_tf.training import config as config_lib
    from rethink_tf.training import tasks
    from rethink_tf.training import trainer
    config = config_lib.load(workdir)
    if config.task != "detection":
        raise SystemExit(f"--workdir={workdir}: a detection workdir is needed, not "
                         f"{config.task!r}")
    _, model, _ = tasks.load_model(workdir, checkpoint, config=config)
    info = tasks.dataset_info(config)
    num_classes = tasks.num_classes(config, info)
    predict = evaluator.make_predict_fn(model, "detection")
    data = tasks.eval_dataset(config)
    inputs = trainer.evaluation_inputs(config, info, config.dataset.eval_split)
    evaluator.evaluate(model, data, "detection", num_classes, num_images=min(num_images, 64),
                       predict_fn=predict, **inputs)  # trace, open files
    out = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        out[name] = time.perf_counter() - start
        return result

    metrics, _ = timed("whole_evaluate", lambda: evaluator.evaluate(
        model, data, "detection", num_classes, num_images=num_images, predict_fn=predict,
        **inputs))
    out["num_images"] = metrics["num_images"]
    out["loop_images_per_s"] = metrics["images_per_s"]
    batches = timed("input_only", lambda: list(
        data.take(-(-metrics["num_images"] // int(config.eval.batch_size)))))
    batches[-1] = tf.nest.map_structure(  # the last batch cut as evaluate cuts it
        lambda t: t[:metrics["num_images"] - (len(batches) - 1) * int(config.eval.batch_size)],
        batches[-1])
    preds = timed("model_only", lambda: [tf.nest.map_structure(lambda t: t.numpy(),
                                                               predict(b["images"]))
                                         for b in batches])
    originals = None
    if "originals" in inputs:
        originals = timed("originals_only", lambda: [
            {k: v.numpy() for k, v in example.items() if k != "image"}
            for example in inputs["originals"].take(metrics["num_images"])])
    scorer = coco_ap.CocoDetectionEvaluator(
        num_classes=num_classes, annotation_file=inputs.get("annotation_file"),
        category_ids=inputs.get("category_ids"))

    def bookkeeping():
        position = 0
        for batch, pred in zip(batches, preds):
            n = int(batch["images"].shape[0])
            ids = [evaluator._as_text(s) for s in batch["source_id"].numpy()]
            evaluator._update_detection(
                scorer, batch, pred, ids,
                originals[position:position + n] if originals is not None else None,
                inputs.get("annotation_file") is not None)
            position += n

    timed("bookkeeping", bookkeeping)
    scored = timed("coco_scoring", lambda: scorer.result(per_class=True))
    if abs(scored["AP"] - metrics["AP"]) > 1e-9:
        raise RuntimeError(f"the parts scored AP {scored['AP']}, the whole {metrics['AP']}")
    if ab_rounds:
        out["ab"] = _ab(evaluator, lambda: evaluator.evaluate(
            model, data, "detection", num_classes, num_images=num_images, predict_fn=predict,
            **inputs)[0], ab_rounds)
    out["boxes_per_image"] = float(np.mean(np.concatenate(
        [np.reshape(p["num_detections"], [-1]) for p in preds])))
    out["images_per_s"] = {key: out["num_images"] / out[key] for key in (
        "whole_evaluate", "input_only", "model_only", "originals_only", "bookkeeping",
        "coco_scoring") if key in out}
    return out


def _ab(evaluator, evaluate, rounds):
    """Times `evaluate` `rounds` times each way, alternating which goes first."""
    import functools  # pylint: disable=g-import-not-at-top
    original = evaluator.predicted_batches
    ways = {"ahead": functools.partial(original, ahead=True),
            "sequential": functools.partial(original, ahead=False)}
    out = {name: [] for name in ways}
    try:
        for r in range(rounds):
            for name in (("ahead", "sequential") if r % 2 == 0 else ("sequential", "ahead")):
                evaluator.predicted_batches = ways[name]
                start = time.perf_counter()
                metrics = evaluate()
                out[name].append({"s": time.perf_counter() - start, "AP": metrics["AP"],
                                  "loop_images_per_s": metrics["images_per_s"]})
    finally:
        evaluator.predicted_batches = original
    if len({r["AP"] for name in ways for r in out[name]}) != 1:
        raise RuntimeError(f"the two ways scored different APs: {out}")
    for name in ways:
        out[f"{name}_median_s"] = float(np.median([r["s"] for r in out[name]]))
        out[f"{name}_mean_s"] = float(np.mean([r["s"] for r in out[name]]))
        out[f"{name}_median_loop_images_per_s"] = float(np.median(
            [r["loop_images_per_s"] for r in out[name]]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--checkpoint", default="latest")
    parser.add_argument("--ab_rounds", type=int, default=0,
                        help="also time the whole evaluation this many times each way: the "
                             "model one batch ahead of the bookkeeping vs sequential")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.workdir, "config.json")):
        parser.error(f"--workdir={args.workdir}: not a training workdir (no config.json)")
    result = measure(args.workdir, args.images, args.checkpoint, args.ab_rounds)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
