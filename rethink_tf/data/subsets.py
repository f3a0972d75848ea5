"""Deterministic, nested subsets of a source, chosen by a hash of `source_id`.

`in_fraction(ids, f)` keeps the examples whose `to_hash_bucket_fast(source_id, 10000)`
(FarmHash Fingerprint64, the same on every machine) is below `round(f * 10000)`, so a 20%
subset is contained in the 50% one and the subset depends on nothing but ids.
"""
from __future__ import annotations

import numbers

import tensorflow as tf

FRACTION_BUCKETS = 10000


def check_fraction(fraction):
    """`fraction` as a float in (0, 1], or None; raises ValueError otherwise."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (
            0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


def in_fraction(source_id, fraction: float):
    """True where `source_id` belongs to the deterministic `fraction` subset.

    Args:
        source_id: a string tensor (any shape) or Python string(s).
        fraction: in (0, 1].

    Returns:
        A bool tensor of `source_id`'s shape.
    """
    fraction = check_fraction(fraction)
    threshold = max(1, int(round(fraction * FRACTION_BUCKETS)))
    return tf.strings.to_hash_bucket_fast(source_id, FRACTION_BUCKETS) < threshold
