"""Pseudo-labeling as an Apache Beam pipeline: the same output as `labeler.pseudo_label`.

    python -m rethink_tf.pseudo_label --teacher=... --unlabeled=... --output=DIR \
        --runner=DirectRunner            # or DataflowRunner / FlinkRunner / SparkRunner + options

The launcher writes `settings.json` (checking a re-run's settings as the local labeler does),
then the pipeline distributes the unfinished output shards: `Create(shards) | Reshuffle |
ParDo(label one shard)`, each worker loading the teacher once (`DoFn.setup`) and writing its
shard exactly as the local labeler would (same code, temporary name then rename), so the
records are byte-identical to a local run and a failed bundle retried by the runner just
rewrites its shard. The manifest is merged once all shards are written.

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
    """
    _require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
    from rethink_tf.pseudo import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
    labeler.check_arguments(score_threshold=score_threshold, pixel_threshold=pixel_threshold,
                            num_output_shards=num_output_shards, batch_size=batch_size,
                            image_format=image_format)
    split = split or labeler.default_split(unlabeled)
    num_output_shards = int(num_output_shards or labeler.default_num_output_shards(1))
    teacher = teacher_lib.load_teacher(teacher_path)
    teacher.check_flip_tta(flip_tta)
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
        pipeline_options = PipelineOptions([f"--runner={runner}", *pipeline_args])
        with beam.Pipeline(options=pipeline_options) as pipeline:
            _ = (pipeline
                 | "Shards" >> beam.Create(pending)
                 | "Distribute" >> beam.Reshuffle()
                 | "Label" >> beam.ParDo(LabelShardFn(os.path.abspath(teacher_path)
                                                      if "://" not in teacher_path
                                                      else teacher_path,
                                                      unlabeled, output_dir, options)))
    return records.write_manifest(output_dir)
