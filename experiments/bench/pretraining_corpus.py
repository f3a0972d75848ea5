r"""The pre-training corpus table: top-1 of four backbones on the glyph corpus's test split, and
the same backbones' detection AP on digit_scenes test after one short fine-tuning.

  python experiments/bench/pretraining_corpus.py --root=/tmp/corpus_bench \
      --pretrained=simclr=/runs/simclr_glyphs,imagenet=/runs/imagenet_glyphs,imagenet_plus=/runs/imagenet_plus_glyphs \
      [--seeds=0,1,2] [--steps=2000] [--out=experiments/bench/corpus_results.json]

Backbones: `random` (fresh weights), and each `name=<pre-training workdir>` of --pretrained
(made by `python -m rethink_tf.pretrain`, see README "Pre-training"). Per backbone:
  probe      the project's linear probe (`pretraining.linear_probe`: softmax regression on
             frozen pooled features of the corpus's train split) scored on its `test` split; for
             random weights `experiments/bench/random_features_probe.py` (seed 0).
  top1       a classifier's own top-1 on `test` (`evaluate --split=test`; ImageNet and
             ImageNet++ only).
  detection  `train --config=experiments/configs/detection.py --config.init=pretrained:<dir>`
             (random: init=random) for --steps steps of 4 scenes (warm-up 10 %), per seed, the
             checkpoint chosen on validation, AP on `test` (`evaluate --split=test`).
Every run is a resumable workdir under --root; re-running skips what is finished. Writes
per-run numbers, wall times and commands to --out (JSON).
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_ROOT = flags.DEFINE_string("root", None, "Directory for the runs' workdirs.")
_PRETRAINED = flags.DEFINE_list("pretrained", [], "name=<pre-training workdir>, ...")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Detection fine-tuning seeds.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Detection fine-tuning steps (batch 4).")
_CORPUS = flags.DEFINE_string("corpus", "digit_scenes/glyphs", "The corpus of the probes.")
_OUT = flags.DEFINE_string("out", None, "JSON results (default: <root>/corpus_results.json).")
flags.mark_flag_as_required("root")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE_CONFIG = "experiments/configs/pretrain_simclr.py:glyphs"  # the probe's settings


def _run(args, log, module=True):
    """Runs `python [-m] <args>` from the repo root; returns (wall seconds, command)."""
    command = [sys.executable, *(["-m"] if module else []), *args]
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(command[1:])}\n")
        f.flush()
        subprocess.run(command, cwd=REPO, stdout=f, stderr=f, check=True)
    return time.time() - start, "python " + " ".join(command[1:])


def _json(path):
    with open(path) as f:
        return json.load(f)


def _cached(results, key, path, args, log, module=True):
    """Runs `args` unless `path` exists; records the wall time and command under `key`."""
    if not os.path.exists(path):
        wall, command = _run(args, log, module)
        results["runs"][key] = {"wall_s": wall, "command": command}
    return _json(path)


def _save(results, out):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, default=float)
    os.replace(tmp, out)


def main(argv):
    del argv
    root = os.path.abspath(_ROOT.value)
    os.makedirs(root, exist_ok=True)
    log = os.path.join(root, "corpus_bench.log")
    out = _OUT.value or os.path.join(root, "corpus_results.json")
    results = _json(out) if os.path.exists(out) else {"runs": {}}
    results.setdefault("runs", {})
    pretrained = dict(item.split("=", 1) for item in _PRETRAINED.value)
    results.update(corpus=_CORPUS.value, steps=_STEPS.value, pretrained=pretrained, rows={})
    probe_data = [f"--config.dataset.name={_CORPUS.value}", "--config.dataset.eval_split=test"]
    for name in ["random", *pretrained]:
        row = {}
        if name == "random":
            path = os.path.join(root, "random_probe_test.json")
            row["probe"] = _cached(results, "probe/random", path, [
                "experiments/bench/random_features_probe.py", f"--config={PROBE_CONFIG}",
                *probe_data, f"--out={path}"], log, module=False)["top1"]
        else:
            workdir = os.path.abspath(pretrained[name])
            probe_dir = os.path.join(root, f"probe_{name}")
            os.makedirs(probe_dir, exist_ok=True)
            # --probe_only writes workdir/probe.json: probe a copy of the backbone's files.
            for suffix in ("weights.h5", "backbone.json"):
                src = os.path.join(workdir, f"backbone.{suffix}")
                dst = os.path.join(probe_dir, f"backbone.{suffix}")
                if not os.path.exists(dst):
                    with open(src, "rb") as a, open(dst, "wb") as b:
                        b.write(a.read())
            row["probe"] = _cached(results, f"probe/{name}", os.path.join(probe_dir, "probe.json"), [
                "rethink_tf.pretrain", f"--config={PROBE_CONFIG}", *probe_data,
                f"--workdir={probe_dir}", "--probe_only"], log)["top1"]
            config = _json(os.path.join(workdir, "config.json"))
            if "simclr" not in config:
                row["top1"] = _cached(results, f"top1/{name}",
                                      os.path.join(workdir, "metrics_test.json"),
                                      ["rethink_tf.evaluate", f"--workdir={workdir}",
                                       "--split=test"], log)["top1"]
        row["detection_test_AP"] = {}
        for seed in _SEEDS.value:
            workdir = os.path.join(root, f"det_{name}_seed{seed}")
            init = "random" if name == "random" else f"pretrained:{os.path.abspath(pretrained[name])}"
            if not os.path.exists(os.path.join(workdir, "metrics.json")):
                wall, command = _run([
                    "rethink_tf.train", "--config=experiments/configs/detection.py",
                    f"--config.init={init}", f"--config.seed={seed}",
                    f"--config.train.steps={_STEPS.value}",
                    f"--config.train.warmup_steps={_STEPS.value // 10}",
                    "--config.train.verbose=2", f"--workdir={workdir}"], log)
                results["runs"][f"det/{name}/{seed}"] = {"wall_s": wall, "command": command}
            metrics = _cached(results, f"det_eval/{name}/{seed}",
                              os.path.join(workdir, "metrics_test.json"),
                              ["rethink_tf.evaluate", f"--workdir={workdir}", "--split=test"],
                              log)
            row["detection_test_AP"][seed] = metrics["AP"]
            results["rows"][name] = row
            _save(results, out)
        print(f"{name}: {row}", flush=True)
    _save(results, out)
    print(f"results: {out}")


if __name__ == "__main__":
    app.run(main)
