"""The main job: [pre-training ->] teacher -> pseudo labels -> student -> evaluation -> report.

With a joint config (`joint.dataset` set, e.g. `detection.py:joint_student`, or `joint=True`)
the student is a joint student (`training/joint.py`): human labels, the teacher's pseudo
labels and a classification set optimised at once; the teacher stays supervised.

  DIR/pretrain/         with a pre-training config: its workdir; teacher and student start
                        from its backbone (`init=pretrained:DIR/pretrain`)
  DIR/teacher/          an ordinary training workdir (config.json, checkpoints, tb, metrics.json)
  DIR/pseudo/           pseudo-label shards, manifest.json, quality.json (if ground truth exists)
  DIR/student/          the student's workdir
  DIR/round<k>/...      with rounds > 1: pseudo/ and student/ of round k (the previous student
                        is the next teacher)
  DIR/serving/<task>/1  the final student as a SavedModel for TF Serving
  DIR/report.md         teacher vs student table and pseudo-label quality
  DIR/pipeline.json     the same numbers, machine-readable

Every stage is resumable: a finished teacher or student is not retrained (its workdir resumes
or is complete), finished pseudo-label shards are skipped, so re-running the command after an
interruption continues where it stopped.
"""

import json
import os
import time

from rethink_tf.data import atomic
from rethink_tf.evaluation import evaluator
from rethink_tf.training import config as config_lib
from rethink_tf.training import joint as joint_lib
from rethink_tf.training import student as student_lib
from rethink_tf.training import trainer


def teacher_config(config):
    """The teacher's config: the student's, without pseudo labels and without model noise
    (stochastic depth), unless the student starts from the teacher's weights.

    The teacher uses `self_training.teacher_augment` ('' = the student's augmentation, so the
    comparison differs only in the pseudo labels) and the same step budget.
    """
    c = config.copy_and_resolve_references()
    c.self_training.pseudo_labels = ""
    c.self_training.student = False
    if "joint" in c:  # the teacher is supervised; a joint student's classification set is its own
        c.joint.dataset = ""
    c.augment = config.self_training.teacher_augment or config.augment
    if config.self_training.student_init != "teacher":
        # A teacher-initialised student needs the teacher's exact architecture (stochastic
        # depth changes the layer graph), so only then does the teacher keep it.
        c.model.drop_path_rate = 0.0
    return c


def student_config(config, pseudo_dir, teacher_dir):
    c = config.copy_and_resolve_references()
    c.self_training.pseudo_labels = pseudo_dir
    c.self_training.student = True
    if c.self_training.student_init == "teacher":
        c.init = f"teacher:{teacher_dir}"
    return c


def _stage(name, index=None, total=None):
    where = f"[{index}/{total}] " if index else ""
    print(f"\n=== {where}{name} ===", flush=True)
    return time.time()


def pseudo_label_stage(config, teacher_dir, pseudo_dir, *, quality_images=1000, progress=True):
    """Labels the unlabeled source with the teacher (resumable) and measures quality (at the
    report's thresholds and the one labelled with; `progress`: a bar on stderr)."""
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
    from rethink_tf.pseudo import quality  # pylint: disable=g-import-not-at-top
    from rethink_tf.pseudo import records  # pylint: disable=g-import-not-at-top
    st = config.self_training
    data_dir = config.dataset.data_dir or None
    labeler.pseudo_label(teacher_dir, st.unlabeled, pseudo_dir, task=config.task,
                         split=st.unlabeled_split, data_dir=data_dir,
                         score_threshold=st.score_threshold, pixel_threshold=st.pixel_threshold,
                         flip_tta=st.flip_tta, progress=progress)
    manifest = records.read_manifest(pseudo_dir)
    quality_path = os.path.join(pseudo_dir, quality.QUALITY_FILE)
    src = sources.info(st.unlabeled, data_dir=data_dir)
    if config.task in src.tasks and not os.path.exists(quality_path):
        # The unlabeled split keeps hidden ground truth (digit_scenes): measure the labels.
        used = st.score_threshold if config.task != "segmentation" else st.pixel_threshold
        quality.report(pseudo_dir, st.unlabeled, st.unlabeled_split, teacher=teacher_dir,
                       data_dir=data_dir, max_images=quality_images,
                       thresholds=sorted({*quality.DEFAULT_THRESHOLDS, float(used)}))
    result = {"manifest": manifest}
    if os.path.exists(quality_path):
        with open(quality_path) as f:
            result["quality"] = json.load(f)
    return result


def check_pretrain_config(config, pretrain_config):
    """Fails early when the pre-training stage cannot feed `config`'s backbone."""
    if config.init != "random":
        raise ValueError(f"config.init={config.init!r} and a pre-training stage both set the "
                         "backbone's start: drop one (the pipeline's --nopretrain keeps init)")
    if pretrain_config.task != "classification":
        raise ValueError(f"pretrain_config.task: pre-training trains a classifier or SimCLR, "
                         f"got {pretrain_config.task!r}")
    if pretrain_config.model.backbone != config.model.backbone:
        raise ValueError(f"pretrain config model.backbone={pretrain_config.model.backbone!r} "
                         f"differs from the pipeline's model.backbone="
                         f"{config.model.backbone!r}: its weights would not load")
    config_lib.validate(pretrain_config)


def pretrain_stage(pretrain_config, pretrain_dir):
    """Pre-trains (or resumes / finds finished) the backbone teacher and student start from."""
    from rethink_tf.training import pretraining  # pylint: disable=g-import-not-at-top
    metrics = pretraining.run(pretrain_config, pretrain_dir)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def run(config, workdir, rounds=1, quality_images=1000, pretrain_config=None, joint=False):
    """Runs [pre-training ->] teacher -> pseudo labels -> student (x rounds); DIR/report.md.

    Args:
      config: a student config (e.g. experiments/configs/detection.py:student); its
        `self_training` section says where the unlabeled images are and how to label them.
      workdir: the pipeline's directory.
      rounds: self-training rounds; the student of round k teaches round k + 1.
      quality_images: unlabeled images scored for pseudo-label quality (0 = all).
      pretrain_config: optional pre-training config (supervised or SimCLR, e.g.
        experiments/configs/pretrain_classification.py): its run in DIR/pretrain gives the
        backbone that teacher and student start from. Needs `config.init == "random"` and the
        same backbone.
      joint: train the student jointly with a classification set (`config.joint`): the
        config's `joint.dataset`, else the pre-training config's dataset, else
        digit_scenes/classification (`config.joint_training`'s defaults otherwise).

    Returns:
      The summary dict (also in DIR/pipeline.json).
    """
    if config.task not in ("detection", "segmentation"):
        raise ValueError(f"config.task: the pipeline runs detection or segmentation, not "
                         f"{config.task!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    config = config.copy_and_resolve_references()
    if joint and not config_lib.is_joint(config):
        corpus = (pretrain_config.dataset.name if pretrain_config is not None
                  and pretrain_config.task == "classification" else "digit_scenes/classification")
        config_lib.joint_training(config, dataset=corpus)
    # Absolute: the path is recorded in teacher's and student's config.json (`init`).
    pretrain_dir = os.path.join(os.path.abspath(workdir), "pretrain")
    if pretrain_config is not None:
        check_pretrain_config(config, pretrain_config)
        config.init = f"pretrained:{pretrain_dir}"
    t_config = teacher_config(config)
    early = t_config
    if pretrain_config is not None:  # its backbone does not exist yet: check the rest
        early = t_config.copy_and_resolve_references()
        early.init = "random"
    config_lib.validate(early)  # fail before any work
    if config_lib.is_joint(config):  # the student's classification set, checked now too
        joint_early = early.copy_and_resolve_references()
        joint_early.joint = config.joint.copy_and_resolve_references()
        config_lib.validate(joint_early)
    os.makedirs(workdir, exist_ok=True)
    summary = {"task": config.task, "init": config.init, "rounds": [], "timings_s": {},
               "joint": config.joint.dataset if config_lib.is_joint(config) else ""}
    # A resumed run adds its time to what earlier invocations spent on each stage.
    spent = _previous_timings(workdir)

    def record_time(stage, start):
        summary["timings_s"][stage] = spent.get(stage, 0.0) + time.time() - start

    total = (pretrain_config is not None) + 1 + 2 * rounds + 1
    count = iter(range(1, total + 1))

    if pretrain_config is not None:
        start = _stage("pre-training", next(count), total)
        summary["pretrain"] = pretrain_stage(pretrain_config, pretrain_dir)
        record_time("pretrain", start)
        config_lib.validate(t_config)
    start = _stage("teacher", next(count), total)
    teacher_dir = os.path.join(workdir, "teacher")
    summary["teacher"] = _metrics(trainer.train(t_config, teacher_dir))
    summary["teacher"]["augment"] = t_config.augment
    record_time("teacher", start)
    for k in range(1, rounds + 1):
        round_dir = workdir if k == 1 else os.path.join(workdir, f"round{k}")
        start = _stage(f"round {k}: pseudo labels from {teacher_dir}", next(count), total)
        pseudo_dir = os.path.join(round_dir, "pseudo")
        pseudo = pseudo_label_stage(config, teacher_dir, pseudo_dir,
                                    quality_images=quality_images or None)
        record_time(f"pseudo_{k}", start)
        start = _stage(f"round {k}: student", next(count), total)
        s_config = student_config(config, pseudo_dir, teacher_dir)
        student_dir = os.path.join(round_dir, "student")
        train_fn = (joint_lib.train_joint if config_lib.is_joint(s_config)
                    else student_lib.train_student)
        metrics = _metrics(train_fn(s_config, student_dir))
        metrics["augment"] = s_config.augment
        record_time(f"student_{k}", start)
        summary["rounds"].append({"round": k, "teacher_dir": teacher_dir,
                                  "pseudo_dir": pseudo_dir, "student_dir": student_dir,
                                  "student": metrics, "pseudo": _pseudo_summary(pseudo)})
        teacher_dir = student_dir
    start = _stage("export", next(count), total)
    summary["export"] = export_stage(teacher_dir, os.path.join(workdir, "serving", config.task))
    record_time("export", start)
    atomic.write_text(os.path.join(workdir, "pipeline.json"),
                      json.dumps(summary, indent=2, default=float))
    atomic.write_text(os.path.join(workdir, "report.md"), render_report(config, summary))
    print(f"\nreport: {os.path.join(workdir, 'report.md')}", flush=True)
    return summary


def _previous_timings(workdir):
    path = os.path.join(workdir, "pipeline.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {k: float(v) for k, v in json.load(f).get("timings_s", {}).items()}


def export_stage(student_dir, base):
    """Exports the final student as `base/1` unless a version is already there."""
    from rethink_tf.serving import export  # pylint: disable=g-import-not-at-top
    if os.path.isdir(base):
        versions = sorted(int(v) for v in os.listdir(base) if v.isdigit())
        if versions:
            return os.path.join(base, str(versions[-1]))
    return export.export(student_dir, base)


def _metrics(metrics):
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def _pseudo_summary(pseudo):
    manifest = pseudo["manifest"]
    out = {k: v for k, v in manifest.items()
           if isinstance(v, (int, float, str, bool)) or "class" in k}
    if "quality" in pseudo:
        out["quality"] = pseudo["quality"]
    return out


def render_report(config, summary):
    """The Markdown report: teacher vs student, and pseudo-label quality."""
    task = summary["task"]
    keys = ["AP", "AP50", "AP75"] if task == "detection" else ["mIoU"]
    primary = evaluator.PRIMARY_METRIC[task]
    lines = [f"# Self-training report ({task})", "",
             f"Dataset `{config.dataset.name}` (labelled split `{config.dataset.train_split}`, "
             f"fraction {config.dataset.fraction}), evaluated on `{config.dataset.eval_split}`; "
             f"unlabeled `{config.self_training.unlabeled}` split "
             f"`{config.self_training.unlabeled_split}`. Same step budget per model "
             f"({config.train.steps} steps, {config.train.batch_size} human images per step). "
             f"Backbone start: `{summary.get('init', config.init)}`" + _pretrain_note(summary)
             + ".",
             "", "| model | augment | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    teacher = summary["teacher"]
    lines.append("| teacher | " + teacher["augment"] + " | " +
                 " | ".join(f"{teacher.get(k, float('nan')):.4f}" for k in keys) + " |")
    name = (f"joint student, + {summary['joint']}" if summary.get("joint") else "student")
    for r in summary["rounds"]:
        s = r["student"]
        lines.append(f"| {name} (round {r['round']}) | {s['augment']} | " +
                     " | ".join(f"{s.get(k, float('nan')):.4f}" for k in keys) + " |")
    last = summary["rounds"][-1]["student"]
    delta = last.get(primary, 0.0) - teacher.get(primary, 0.0)
    lines += ["", f"Student - teacher ({primary}): {delta:+.4f}.", "",
              "Self-training: ratio {ratio} pseudo:human images per batch, loss_norm "
              "{loss_norm}, alpha {alpha}.".format(**{
                  k: config.self_training[k] for k in ("ratio", "loss_norm", "alpha")}), ""]
    for r in summary["rounds"]:
        p = r["pseudo"]
        lines += [f"## Pseudo labels, round {r['round']}", ""]
        lines += [f"- {k}: {v}" for k, v in p.items()
                  if k.startswith("num_") or k.endswith("threshold") or k == "teacher"]
        per_class = p.get("per_class")
        if isinstance(per_class, dict) and per_class:
            # Pseudo labels drift to majority classes: counts next to the labelled set's.
            unit = "pixels" if task == "segmentation" else "boxes"
            lines += ["", f"| class | pseudo {unit} | pseudo share | labelled {unit} | "
                      "labelled share |", "|---|---|---|---|---|"]
            for name, row in per_class.items():
                lines.append(f"| {name} | {row.get(f'pseudo_{unit}', '')} | "
                             f"{_fmt(row.get('pseudo_fraction', ''))} | "
                             f"{row.get(f'labeled_{unit}', '')} | "
                             f"{_fmt(row.get('labeled_fraction', ''))} |")
        quality = p.get("quality")
        if quality:
            lines += ["", "Quality against the hidden ground truth "
                      f"({quality.get('num_images', '?')} images):", ""]
            per = quality.get("thresholds") or []
            if per:
                cols = [c for c in per[0] if c != "threshold"]
                lines += ["| threshold | " + " | ".join(cols) + " |",
                          "|---|" + "---|" * len(cols)]
                for row in per:
                    lines.append(f"| {row['threshold']} | " + " | ".join(
                        _fmt(row[c]) for c in cols) + " |")
        lines.append("")
    times = summary["timings_s"]
    lines += ["## Time", "", "Per stage, summed over the invocations of the command (a resumed "
              "run adds its time).", ""]
    lines += [f"- {k}: {v / 60:.1f} min" for k, v in times.items()]
    lines.append(f"- total: {sum(times.values()) / 60:.1f} min")
    if summary.get("export"):
        lines += ["", f"Final student exported for TF Serving: `{summary['export']}`."]
    return "\n".join(lines) + "\n"


def _pretrain_note(summary):
    pre = summary.get("pretrain")
    if not pre:
        return ""
    score = ", ".join(f"{k} {v:.4f}" for k, v in pre.items()
                      if k in ("top1", "linear_probe_top1") and isinstance(v, float))
    return f" (pre-trained in this pipeline{': ' + score if score else ''})"


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)
