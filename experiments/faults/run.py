r"""Kills the package's commands with SIGKILL at random points, many times, and checks that
running the same command again loses nothing.

  python experiments/faults/run.py --root=/tmp/faults --kills=5
  python experiments/faults/run.py --root=/tmp/faults --kills=20 --steps=40 --parts=train

For each part (training, pre-training, pseudo-labelling, the main job through all its stages),
a reference run goes uninterrupted;
then each trial starts the same command in a fresh directory, kills it with SIGKILL 1-2 times
at a uniformly random moment of a run (start-up, a step, a checkpoint write, an evaluation, a
shard, a rename: wherever it lands), and runs it again to the end. A trial passes when the
result equals the reference's exactly (`config.deterministic`): training and pre-training the
final checkpoint's every value and the metrics; pseudo-labelling every shard's bytes, the
manifest's image count and no duplicate image; the main job all of those for its teacher,
pseudo labels and student, its backbone's values and one exported model. `--suite` also runs
the fault tests (`tests/faults`, the slow-marked ones too: bad inputs, corrupt images and
checkpoints, NaN, full disk) and counts them.

Writes `<root>/results.json` and prints a Markdown summary (`experiments/faults/RESULTS.md`
holds one). Resumable: a finished trial is not rerun.
"""

import collections
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

import procs  # experiments/faults/procs.py (this script's folder is on sys.path)

_ROOT = flags.DEFINE_string("root", None, "Where the runs and results.json go.")
_KILLS = flags.DEFINE_integer("kills", 5, "Trials per part (each kills 1-2 times).")
_STEPS = flags.DEFINE_integer("steps", 12, "Training steps of the train and pretrain runs.")
PARTS = ("train", "pretrain", "pseudo", "pipeline")
_PARTS = flags.DEFINE_list("parts", list(PARTS), "Which commands to kill (the main job, "
                           "`pipeline`, at every stage).")
_SUITE = flags.DEFINE_bool("suite", False, "Also run the fault tests (tests/faults, slow-marked "
                            "included).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill times.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir with (or for) the tiny "
                                "digit_scenes configs; default <root>/tfds.")
flags.mark_flags_as_required(["root"])

UNLABELED = "digit_scenes/detection_tiny"
# The output that marks the end of start-up (imports, building, restoring) in each command.
WORK_STARTS = {"train": "step 1/", "pretrain": "step 1/", "pseudo": "pseudo-labeling:",
               "pipeline": "step 1/"}
# A kill lands in start-up with this probability, else uniformly in the work that follows.
STARTUP_SHARE = 0.2


def _ensure_data(data_dir):
    """Builds the tiny digit_scenes configs (detection, classification) if missing."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import digit_scenes  # pylint: disable=g-import-not-at-top
    for task in ("detection", "classification"):
        builder = tfds.builder("digit_scenes", config=digit_scenes.tiny_config(task),
                               data_dir=data_dir)
        builder.download_and_prepare()


def pipeline_command(data_dir, workdir, steps):
    """The main job (pre-train -> teacher -> pseudo labels -> student -> export), tiny."""
    common = ["train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=2",
              "train.log_every=1", "train.verbose=2", "eval.batch_size=8",
              "eval.num_images=8", "dataset.shuffle_buffer=16", "model.backbone=resnet_tiny",
              f"dataset.data_dir={data_dir}", "deterministic=True",
              f"train.steps={max(steps // 2, 2)}"]
    detection = common + [
        f"dataset.name={UNLABELED}", "dataset.image_size=64", "model.fpn_filters=8",
        "model.head_filters=8", "model.head_depth=1", "eval.tb_images=0",
        f"self_training.unlabeled={UNLABELED}", "self_training.unlabeled_split=unlabeled[:16]",
        "self_training.score_threshold=0.0"]
    pretrain = common + ["dataset.name=digit_scenes/classification_tiny",
                         "dataset.image_size=32"]
    return (["-m", "rethink_tf.pipeline", f"--workdir={workdir}", "--quality_images=8"]
            + [f"--config.{o}" for o in detection]
            + [f"--pretrain_config.{o}" for o in pretrain])


def pseudo_command(data_dir, teacher, output):
    return ["-m", "rethink_tf.pseudo_label", f"--teacher={teacher}", f"--unlabeled={UNLABELED}",
            "--split=unlabeled", f"--data_dir={data_dir}", f"--output={output}",
            "--num_output_shards=8", "--shards_per_pass=1", "--batch_size=4",
            "--score_threshold=0.0"]


# What a finished run is, compared with the reference's.

compare_training = procs.training_differences


def compare_pipeline(reference, workdir):
    """[] when every stage's result equals the reference's: pre-trained backbone, teacher,
    pseudo labels, student (checkpoints and metrics), and one exported model."""
    problems = []
    for stage in ("teacher", "student"):
        problems += [f"{stage}: {p}" for p in compare_training(os.path.join(reference, stage),
                                                               os.path.join(workdir, stage))]
    problems += [f"pseudo: {p}" for p in compare_pseudo(os.path.join(reference, "pseudo"),
                                                         os.path.join(workdir, "pseudo"))]
    name = os.path.join("pretrain", "backbone.weights.h5")
    if _h5_values(os.path.join(reference, name)) != _h5_values(os.path.join(workdir, name)):
        problems.append(f"{name} differs")
    exported = glob.glob(os.path.join(workdir, "serving", "*", "*", "saved_model.pb"))
    if len(exported) != 1:
        problems.append(f"{len(exported)} exported models (want 1)")
    return problems


def _h5_values(path):
    import h5py  # pylint: disable=g-import-not-at-top
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()].tobytes())
                     if isinstance(o, h5py.Dataset) else None)
    return out


def compare_pseudo(reference, output):
    """[] when every shard's bytes and the manifest equal the reference's, else what differs."""
    from rethink_tf.pseudo import records  # pylint: disable=g-import-not-at-top
    problems = []

    def shard_bytes(d):
        out = {}
        for path in records.list_shards(d).values():
            with open(path, "rb") as f:
                out[os.path.basename(path)] = f.read()
        return out
    want, got = shard_bytes(reference), shard_bytes(output)
    if want != got:
        problems.append(f"shards differ ({len(got)} vs {len(want)} files)")
    w, g = records.read_manifest(reference), records.read_manifest(output)
    if w["num_images"] != g["num_images"]:
        problems.append(f"manifest counts {g['num_images']} images, reference {w['num_images']}")
    ids = [e["source_id"] for e in records.load_pseudo_labels(output).as_numpy_iterator()]
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} duplicate pseudo-labelled images")
    if len(ids) != w["num_images"]:
        problems.append(f"{len(ids)} pseudo-labelled images read, reference {w['num_images']}")
    leftovers = glob.glob(os.path.join(output, "*.tmp-*"))
    if leftovers:
        problems.append(f"{len(leftovers)} temporary files left")
    return problems


def _kill_time(marker, startup, offset):
    """A `should_kill`: at `startup` s from the start (a start-up kill), or `offset` s after
    this run prints `marker` (its work begins: measured in this run, so a loaded machine's
    slower start-up does not push every kill into it)."""
    seen = {}

    def should_kill(output, elapsed):
        if startup is not None:
            return elapsed >= startup
        if "at" not in seen and marker in output:
            seen["at"] = elapsed
        return "at" in seen and elapsed >= seen["at"] + offset
    return should_kill


def run_trial(name, part, command, compare, reference, directory, timeline, rng):
    """Kills `command` (which writes `directory`) 1-2 times at random moments, reruns it to
    the end, compares; returns the trial's record.

    `timeline` is the reference's {"work_s", "wall_s"}: a kill lands in start-up (uniformly
    before the reference's work began) with probability STARTUP_SHARE, else uniformly within
    the reference's work duration after this run's work begins (`WORK_STARTS`).
    """
    kills = []
    for _ in range(rng.choice((1, 1, 2))):
        work_s, wall_s = timeline["work_s"], timeline["wall_s"]
        if rng.random() < STARTUP_SHARE:
            startup, offset = rng.uniform(0.0, work_s), None
        else:
            startup, offset = None, rng.uniform(0.0, max(wall_s - work_s, 0.1))
        killed, returncode, output, elapsed = procs.kill_when(
            command, _kill_time(WORK_STARTS[part], startup, offset))
        kills.append({"where": "start-up" if offset is None else "work",
                      "at_s": round(elapsed, 2), "killed": killed,
                      "returncode": returncode, "last_line": procs.last_line(output)})
        if not killed and returncode != 0:
            return {"trial": name, "kills": kills, "passed": False,
                    "problems": [f"the run failed on its own (rc {returncode}): "
                                 f"{procs.last_line(output)}"]}
    returncode, output = procs.run(command)
    problems = ([f"the rerun failed (rc {returncode}): {procs.last_line(output)}"]
                if returncode else compare(reference, directory))
    return {"trial": name, "kills": kills, "resumed": "Resuming" in output,
            "passed": not problems, "problems": problems}


def _commands(data_dir, results):
    return {
        "train": lambda d: procs.train_command(data_dir, d, _STEPS.value,
                                                 eval_every=max(_STEPS.value // 3, 1),
                                                 eval_images=16),
        "pretrain": lambda d: procs.pretrain_command(data_dir, d, _STEPS.value),
        "pseudo": lambda d: pseudo_command(data_dir, results["references"]["train"]["dir"], d),
        "pipeline": lambda d: pipeline_command(data_dir, d, _STEPS.value),
    }


def _reference(part, root, data_dir, results):
    """Runs (once) the uninterrupted reference of `part`; pseudo labels need train's."""
    references = results.setdefault("references", {})
    if part == "pseudo":
        _reference("train", root, data_dir, results)
    if part not in references:
        directory = os.path.join(root, part, "reference")
        if os.path.exists(directory):  # a reference cut short earlier: start it over
            shutil.rmtree(directory)
        command = _commands(data_dir, results)[part](directory)
        seen = {}

        def watch(output, elapsed):  # never kills: notes when the work (not start-up) begins
            if "work_s" not in seen and WORK_STARTS[part] in output:
                seen["work_s"] = elapsed
            return False
        _, returncode, output, wall_s = procs.kill_when(command, watch)
        if returncode:
            raise RuntimeError(f"reference run failed: python {' '.join(command)}\n"
                               f"{output[-3000:]}")
        references[part] = {"dir": directory, "wall_s": round(wall_s, 1),
                            "work_s": round(seen.get("work_s", 0.0), 1)}
        _save(root, results)
    return references[part]


def run_part(part, root, data_dir, results):
    reference = _reference(part, root, data_dir, results)
    ref_dir, command = reference["dir"], _commands(data_dir, results)[part]
    compare = {"pseudo": compare_pseudo, "pipeline": compare_pipeline}.get(part,
                                                                           compare_training)
    trials = results.setdefault("trials", {}).setdefault(part, [])
    for index in range(_KILLS.value):
        draw = random.Random(f"{_SEED.value}-{part}-{index}")  # the same kill times on a rerun
        if index < len(trials):
            continue
        directory = os.path.join(root, part, f"trial_{index}")
        record = run_trial(f"{part}_{index}", part, command(directory), compare, ref_dir,
                           directory, reference, draw)
        trials.append(record)
        _save(root, results)
        status = "ok" if record["passed"] else "FAILED: " + "; ".join(record["problems"])
        print(f"[{part} {index + 1}/{_KILLS.value}] kills at "
              f"{', '.join(str(k['at_s']) for k in record['kills'])} s "
              f"(last lines: {' | '.join(k['last_line'] for k in record['kills'])}): {status}",
              flush=True)


def run_suite(root, results):
    """The fault tests (slow-marked included), with a JUnit XML; counts passed / failed per
    test file."""
    import xml.etree.ElementTree as ET  # pylint: disable=g-import-not-at-top
    xml_path = os.path.join(root, "suite.xml")
    start = time.time()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-m", "slow or not slow",  # the slow-marked fault tests too
                    f"--junitxml={xml_path}", "tests/faults"], cwd=procs.REPO_ROOT,
                   env=procs.env(), check=False)
    counts = collections.defaultdict(collections.Counter)
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "xfail/skip"
        counts[case.get("classname", "").rsplit(".", 1)[-1]][outcome] += 1
    results["suite"] = {"files": {k: dict(v) for k, v in sorted(counts.items())},
                        "wall_s": round(time.time() - start, 1)}


def _save(root, results):
    from rethink_tf.data import atomic  # pylint: disable=g-import-not-at-top
    atomic.write_json(os.path.join(root, "results.json"), results, "fault results", indent=2)


def summary_markdown(results):
    lines = ["| part | trials | kills (in start-up / in the work) | reruns that resumed | passed "
             "| reference run |", "|---|---:|---:|---:|---:|---:|"]
    for part, trials in results.get("trials", {}).items():
        kills = [k for t in trials for k in t["kills"] if k["killed"]]
        work = sum(k.get("where") == "work" for k in kills)
        lines.append(
            f"| {part} | {len(trials)} | {len(kills)} ({len(kills) - work} / {work}) | "
            f"{sum(bool(t.get('resumed')) for t in trials)}"
            f" | {sum(t['passed'] for t in trials)} / {len(trials)} | "
            f"{results['references'][part]['wall_s']} s (work from "
            f"{results['references'][part]['work_s']} s) |")
    failed = [t for ts in results.get("trials", {}).values() for t in ts if not t["passed"]]
    for t in failed:
        lines.append(f"\nFAILED {t['trial']}: {'; '.join(t['problems'])}")
    if "suite" in results:
        lines += ["", "| fault tests (tests/faults) | passed | failed | xfail/skip |",
                  "|---|---:|---:|---:|"]
        for name, c in results["suite"]["files"].items():
            lines.append(f"| {name} | {c.get('passed', 0)} | {c.get('failed', 0)} | "
                         f"{c.get('xfail/skip', 0)} |")
    return "\n".join(lines)


def main(argv):
    del argv
    for part in _PARTS.value:
        if part not in PARTS:
            raise app.UsageError(f"--parts: unknown part {part!r} ({', '.join(PARTS)})")
    root = os.path.abspath(_ROOT.value)
    os.makedirs(root, exist_ok=True)
    data_dir = os.path.abspath(_DATA_DIR.value or os.path.join(root, "tfds"))
    _ensure_data(data_dir)
    path = os.path.join(root, "results.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results["settings"] = {"kills": _KILLS.value, "steps": _STEPS.value, "seed": _SEED.value,
                           "parts": list(_PARTS.value)}
    for part in _PARTS.value:
        run_part(part, root, data_dir, results)
    if _SUITE.value:
        run_suite(root, results)
    _save(root, results)
    print(summary_markdown(results))
    failed = sum(not t["passed"] for ts in results.get("trials", {}).values() for t in ts)
    if failed:
        raise SystemExit(f"{failed} trial(s) lost or changed something: see {path}")


if __name__ == "__main__":
    app.run(main)
