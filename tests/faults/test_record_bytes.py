"""Pseudo-label records must be the same bytes in every process.

A run killed with SIGKILL is finished by a new process; machines sharing the work
(`--shard_index`) and Beam workers are other processes. A `tf.train.Example` serialised with
protobuf's default (upb) serialiser writes its feature map in an order that is random per
process, so the same record gets different bytes in each: the shards of a resumed run, of
another machine or of a Beam worker differ byte for byte from an uninterrupted local run's
(their records parse to the same values). Deterministic serialisation sorts the map keys.
"""

import numpy as np
import tensorflow as tf

from rethink_tf.pseudo import records


def _records():
    png = records.encode_image(np.zeros((6, 8, 3), np.uint8))
    return [
        records.serialize_detection(png, "scene/1", 6, 8, [[1, 1, 4, 5]], [3], [0.75]),
        records.serialize_segmentation(png, "scene/2", 6, 8, np.ones((6, 8), np.uint8), 0.5),
        records.serialize_classification(png, "glyph/3", 6, 8, [0.1, 0.7, 0.2]),
    ]


def test_records_parse_back_to_what_was_written():
    detection, segmentation, classification = (tf.train.Example.FromString(r)
                                               for r in _records())
    assert detection.features.feature["source_id"].bytes_list.value == [b"scene/1"]
    assert detection.features.feature["scores"].float_list.value == [0.75]
    assert segmentation.features.feature["source_id"].bytes_list.value == [b"scene/2"]
    assert classification.features.feature["label"].int64_list.value == [1]
    assert classification.features.feature["score"].float_list.value == [
        np.float32(0.7)]


def test_records_are_serialised_deterministically():
    # Equal to the sorted-key serialisation: the same bytes in every process. (A random map
    # order matches it by chance with probability ~1/13!, so this cannot pass by luck.)
    for record in _records():
        assert record == tf.train.Example.FromString(record).SerializeToString(
            deterministic=True)
