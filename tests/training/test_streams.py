"""Named-stream bookkeeping: the loss normaliser over several auxiliary streams against NumPy."""

import numpy as np
import pytest

from rethink_tf.training import streams


def numpy_weights(human, aux, alphas, loss_norm_on, decay):
    """Reference: per stream an EMA from its first value; w_s = alpha_s avg_h / avg_s."""
    avg = {}
    weights, totals = [], []
    for step, h in enumerate(human):
        values = {"human": h, **{name: aux[name][step] for name in aux}}
        for name, value in values.items():
            avg[name] = value if name not in avg else decay * avg[name] + (1 - decay) * value
        w = {name: alphas[name] * (avg["human"] / avg[name] if loss_norm_on[name] else 1.0)
             for name in aux}
        weights.append(w)
        totals.append(h + sum(w[name] * aux[name][step] for name in aux))
    return weights, totals


def test_normalizer_with_two_auxiliary_streams_matches_numpy():
    rng = np.random.default_rng(0)
    human = rng.uniform(0.5, 2.0, 8)
    aux = {"pseudo": rng.uniform(5, 50, 8), "classification": rng.uniform(0.1, 3, 8)}
    alphas = {"pseudo": 0.7, "classification": 0.3}
    loss_norm_on = {"pseudo": True, "classification": False}
    normalizer = streams.LossNormalizer(alphas, loss_norm_on, decay=0.9)
    ref_weights, ref_totals = numpy_weights(human, aux, alphas, loss_norm_on, 0.9)
    for step in range(8):
        losses = {"human": np.float32(human[step]),
                  **{name: np.float32(v[step]) for name, v in aux.items()}}
        weights = normalizer.update(losses, {name: True for name in losses})
        total = normalizer.total(losses, weights)
        for name in aux:
            assert float(weights[name]) == pytest.approx(ref_weights[step][name], rel=1e-5)
        assert float(total) == pytest.approx(ref_totals[step], rel=1e-5)
    names = streams.normalizer_metric_names(normalizer)
    assert names == ["avg_human_loss", "avg_pseudo_loss", "avg_classification_loss",
                     "pseudo_weight", "classification_weight"]
    state = normalizer.state
    assert {v.name.split(":")[0] for v in state.variables} >= {
        "avg_human_loss", "avg_pseudo_loss", "avg_classification_loss", "human_updates"}


def test_normalizer_rejects_unknown_or_main_streams():
    with pytest.raises(ValueError, match="auxiliary streams must be among"):
        streams.LossNormalizer({"human": 1.0})
    with pytest.raises(ValueError, match="auxiliary streams must be among"):
        streams.LossNormalizer({"imagenet": 1.0})
