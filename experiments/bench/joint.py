r"""Joint training against supervised training, on digit_scenes, several seeds, test split.

  python experiments/bench/joint.py --root=/tmp/joint_bench [--seeds=0,1,2] \
      [--task=detection|segmentation] [--out=experiments/bench/joint_detection.json]

Per seed, with the student recipe's budget (`detection.py:student`: 1,500 steps of 8 human
images, AutoAugment + scale jitter, from random initialisation):
  supervised        the pipeline's teacher (`pipeline --joint --nopretrain`, DIR/teacher)
  joint             `train --config=<task>.py:joint`: + 8 digit_scenes/classification images
                    per step (64 px, AutoAugment), alpha_c 1 with loss normalisation
  joint + pseudo    the pipeline's joint student (DIR/student): + the teacher's pseudo labels
                    on 8 unlabeled scenes per step (threshold 0.4), stochastic depth 0.1
Each is evaluated on the **test** split (`evaluate --split=test`, the checkpoint chosen on
validation). Every run is an ordinary resumable workdir under --root: re-running the command
skips what is finished. Writes the per-run numbers, wall times and commands as JSON.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_ROOT = flags.DEFINE_string("root", None, "Directory for the runs' workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_TASK = flags.DEFINE_enum("task", "detection", ["detection", "segmentation"], "Task.")
_OUT = flags.DEFINE_string("out", None, "JSON results file (default: <root>/joint_<task>.json).")
flags.mark_flag_as_required("root")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, log):
    """Runs `python -m <args>` from the repo root; returns the wall seconds."""
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ python -m {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", *args], cwd=REPO, stdout=f, stderr=f, check=True)
    return time.time() - start


def _metrics(workdir, log):
    path = os.path.join(workdir, "metrics_test.json")
    if not os.path.exists(path):
        _run(["rethink_tf.evaluate", f"--workdir={workdir}", "--split=test"], log)
    with open(path) as f:
        return json.load(f)


def main(argv):
    del argv
    task = _TASK.value
    config = f"experiments/configs/{task}.py"
    root = os.path.abspath(_ROOT.value)
    os.makedirs(root, exist_ok=True)
    log = os.path.join(root, f"joint_{task}.log")
    out = _OUT.value or os.path.join(root, f"joint_{task}.json")
    results = json.load(open(out)) if os.path.exists(out) else {"runs": {}}
    results.update({"task": task, "config": config})
    for seed in _SEEDS.value:
        run_dir = os.path.join(root, f"{task}_seed{seed}")
        pipeline = os.path.join(run_dir, "pipeline")
        joint = os.path.join(run_dir, "joint")
        commands = {
            "pipeline": ["rethink_tf.pipeline", "--joint", "--nopretrain",
                         f"--config={config}:student", f"--config.seed={seed}",
                         f"--workdir={pipeline}"],
            "joint": ["rethink_tf.train", f"--config={config}:joint", f"--config.seed={seed}",
                      f"--workdir={joint}"],
        }
        times = results["runs"].get(seed, {}).get("wall_s", {})
        for name, args in commands.items():
            if name not in times:
                print(f"seed {seed}: {name} ...", flush=True)
                times[name] = _run(args, log)
        rows = {"supervised": os.path.join(pipeline, "teacher"), "joint": joint,
                "joint_pseudo": os.path.join(pipeline, "student")}
        metrics = {row: _metrics(workdir, log) for row, workdir in rows.items()}
        validation = {}
        for row, workdir in rows.items():
            with open(os.path.join(workdir, "metrics.json")) as f:
                validation[row] = json.load(f)
        results["runs"][seed] = {
            "wall_s": times, "commands": {k: "python -m " + " ".join(v)
                                          for k, v in commands.items()},
            "test": metrics, "validation": validation}
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, default=float)
        os.replace(tmp, out)
        primary = "AP" if task == "detection" else "mIoU"
        print(f"seed {seed}: " + ", ".join(f"{row} {m[primary]:.4f}"
                                          for row, m in metrics.items()), flush=True)
    print(f"results: {out}")


if __name__ == "__main__":
    app.run(main)
