"""Pseudo-labeling as an Apache Beam pipeline: the same output as `labeler.pseudo_label`.

    python -m rethink_tf.pseudo_label --teacher=... --unlabeled=... --output=DIR \
        --runner=DirectRunner            # or DataflowRunner / FlinkRunner / SparkRunner + options

The runner name and the Beam options are checked before any work (a typo in either fails
with a ValueError naming it, before the teacher is loaded or the output touched). The launcher
then writes `settings.json` (checking a re-run's settings as the local labeler does),
then the pipeline distributes the unfinished output shards: `Create(shards) | Reshuffle |
ParDo(label one shard)`, each worker loading the teacher once (`DoFn.setup`) and writing its
shard exactly as the local labeler would (same code, temporary name then rename), so the
records are a local run's (the same values: a record's feature map is serialised in an order
that differs between processes) and a failed bundle retried by the runner just rewrites its
shard. The manifest is merged once all shards are written.

Each shard's worker streams the whole source and runs the model on that shard's images only,
so per shard the source is read once; the teacher and source paths must be readable from
the workers (e.g. gs:// for Dataflow). Needs `pip install rethink-tf[beam]`.
"""

from __future__ import annotations

import os

from rethink_tf.pseudo import labeler
from rethink_tf.pseudo import records

try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
except ImportError:  # the [beam] extra is optional
    beam = None


def _require_beam():
    if beam is None:
        raise ImportError("the Beam pipeline needs Apache Beam: pip install 'rethink-tf[beam]' "
                          "(or apache-beam>=2.60)")


if beam is not None:

    class LabelShardFn(beam.DoFn):
        """Labels whole output shards; the teacher is loaded once per worker."""

        def __init__(self, teacher_path, unlabeled, output_dir, options):
            super().__init__()
            self._teacher_path = teacher_path
            self._unlabeled = unlabeled
            self._output_dir = output_dir
            self._options = dict(options)
            self._teacher = None

        def setup(self):
            from rethink_tf.pseudo import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
            self._teacher = teacher_lib.load_teacher(self._teacher_path)

        def process(self, shard):
            n = self._options["num_output_shards"]
            # Machine `shard` of n owns exactly output shard `shard`.
            manifest = labeler.pseudo_label(
                self._teacher, self._unlabeled, self._output_dir, num_shards=n,
                shard_index=int(shard), progress=False, labeled_counts=None, **self._options)
            yield int(shard), manifest["num_images"]


def pipeline_options(runner="DirectRunner", pipeline_args=()):
    """Beam `PipelineOptions` for `runner` and `pipeline_args`, checked before any work.

    Args:
        runner: a Beam runner name (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner,
            PortableRunner, ...).
        pipeline_args: more Beam options, e.g. `["--direct_running_mode=multi_processing",
            "--direct_num_workers=2"]` or `["--project=...", "--region=..."]`.

    Returns:
        The parsed `PipelineOptions`.

    Raises:
        ValueError: an unknown runner, or an option value Beam rejects (argparse prints which
            and why; unknown option names are only logged by Beam, as it discards them).
    """
    _require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
    from apache_beam.runners import runner as runner_lib  # pylint: disable=g-import-not-at-top
    args = [f"--runner={runner}", *pipeline_args]
    try:
        runner_lib.create_runner(runner)
    except ValueError as err:
        raise ValueError(f"runner={runner!r}: {err}") from err
    options = PipelineOptions(args)
    try:
        options.get_all_options()  # parses every option now, not when the pipeline starts
    except SystemExit as err:  # argparse rejects a value by exiting; it printed why
        raise ValueError(f"Beam pipeline options {list(pipeline_args)}: a value is invalid "
                         "(see the argparse error above)") from err
    return options


def run(teacher_path, unlabeled, output_dir, *, runner="DirectRunner", pipeline_args=(),
        split=None, data_dir=None, score_threshold=0.5, pixel_threshold=0.5, drop_empty=False,
        flip_tta=False, num_output_shards=None, batch_size=32, image_format="source",
        labeled_counts="auto"):
    """Runs pseudo-labeling on a Beam runner; returns the manifest.

    Args:
        teacher_path: a teacher workdir or SavedModel (readable by the workers).
        unlabeled: a source name (see `labeler.pseudo_label`).
        output_dir: the pseudo-label directory.
        runner: the Beam runner name.
        pipeline_args: more Beam pipeline options (e.g. `--project=...`).
        split, data_dir, score_threshold, pixel_threshold, drop_empty, flip_tta,
            num_output_shards, batch_size, image_format, labeled_counts: as for
            `labeler.pseudo_label`.

    Returns:
        The merged manifest.

    Raises:
        ValueError: a bad argument, runner or Beam option (before any work), or an output
            directory made with other settings.
    """
    _require_beam()
    from rethink_tf.pseudo import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
    labeler.check_arguments(score_threshold=score_threshold, pixel_threshold=pixel_threshold,
                            num_output_shards=num_output_shards, batch_size=batch_size,
                            image_format=image_format)
    beam_options = pipeline_options(runner, pipeline_args)
    split = split or labeler.default_split(unlabeled)
    num_output_shards = int(num_output_shards or labeler.default_num_output_shards(1))
    teacher = teacher_lib.load_teacher(teacher_path)
    labeler.check_flip_tta(teacher, unlabeled, flip_tta)
    if teacher.task == teacher_lib.DETECTION:
        teacher.set_score_threshold(score_threshold)
    labeler.prepare_output(teacher, {"source": unlabeled, "split": split}, output_dir,
                           score_threshold=score_threshold, pixel_threshold=pixel_threshold,
                           flip_tta=flip_tta, drop_empty=drop_empty,
                           num_output_shards=num_output_shards, image_format=image_format,
                           labeled_counts=labeled_counts)
    done = records.list_shards(output_dir)
    pending = [j for j in range(num_output_shards) if j not in done]
    options = {"split": split, "data_dir": data_dir, "score_threshold": score_threshold,
               "pixel_threshold": pixel_threshold, "drop_empty": drop_empty,
               "flip_tta": flip_tta, "num_output_shards": num_output_shards,
               "batch_size": batch_size, "image_format": image_format}
    if pending:
        with beam.Pipeline(options=beam_options) as pipeline:
            _ = (pipeline
                 | "Shards" >> beam.Create(pending)
                 | "Distribute" >> beam.Reshuffle()
                 | "Label" >> beam.ParDo(LabelShardFn(os.path.abspath(teacher_path)
                                                      if "://" not in teacher_path
                                                      else teacher_path,
                                                      unlabeled, output_dir, options)))
    return records.write_manifest(output_dir)
