"""Pseudo-labeling: a teacher labels unlabeled images into sharded TFRecords.

    teacher.load_teacher(path)          a workdir (best checkpoint, else latest) or SavedModel
    labeler.pseudo_label(...)           teacher x unlabeled source -> output_dir shards + manifest
    records.load_pseudo_labels(dir)     the shards back as canonical examples (`pseudo:<dir>`)
    quality.report(...)                 precision / recall / AP (or mIoU) against hidden truth
    beam_pipeline.run(...)              the same output with Apache Beam

Modules are imported on use (`from rethink_tf.pseudo import labeler`), so importing the
package costs nothing.
"""
