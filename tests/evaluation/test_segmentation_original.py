"""Segmentation mIoU at the original resolution (the VOC protocol) vs model resolution."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.evaluation import evaluator

NUM_CLASSES = 3
INPUT = 8


def _reference_miou(labels, preds, num_classes, ignore=255):
    keep = labels != ignore
    labels, preds = labels[keep], preds[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((labels == c) | (preds == c))
        if union:
            ious.append(np.sum((labels == c) & (preds == c)) / union)
    return float(np.mean(ious))


def _case():
    """Two images, 16x12 and 10x16, scaled by 1/2 into an 8x8 input (bottom/right padding).

    Predictions are one-hot logits at model resolution; bilinear 2x upsampling of one-hot
    logits takes the class of the nearest model pixel (weights 3/4 vs 1/4), so the original
    resolution prediction is the model one repeated 2x2: a reference without interpolation.
    """
    rng = np.random.RandomState(3)
    sizes = [(16, 12), (10, 16)]
    batch = {"images": np.zeros((2, INPUT, INPUT, 3), np.float32),
             "segmentation_masks": np.full((2, INPUT, INPUT, 1), 255, np.int32),
             "source_id": np.array([b"a", b"b"]),
             "image_info": np.zeros((2, 4, 2), np.float32)}
    logits = np.zeros((2, INPUT, INPUT, NUM_CLASSES), np.float32)
    originals, references = [], []
    for i, (h, w) in enumerate(sizes):
        mask = rng.randint(0, NUM_CLASSES - 1, (h, w)).astype(np.uint8)
        mask[1::4, :] = NUM_CLASSES - 1  # thin rows the 2x downsample never samples
        mask[rng.uniform(size=(h, w)) < 0.1] = 255
        originals.append({"source_id": [b"a", b"b"][i], "mask": mask[..., None],
                          "image": np.zeros((h, w, 3), np.uint8)})
        batch["image_info"][i] = [[h, w], [INPUT, INPUT], [0.5, 0.5], [0, 0]]
        # What the eval pipeline feeds the model-resolution metric: a nearest downsample.
        batch["segmentation_masks"][i, :h // 2, :w // 2, 0] = mask[::2, ::2]
        pred = rng.randint(0, NUM_CLASSES, (INPUT, INPUT))
        logits[i] = np.eye(NUM_CLASSES)[pred]
        references.append((mask, np.repeat(np.repeat(pred, 2, 0), 2, 1)[:h, :w]))
    batch = {k: tf.constant(v) for k, v in batch.items()}
    return batch, logits, originals, references


def test_miou_at_original_resolution_equals_numpy_reference():
    batch, logits, originals, references = _case()
    metrics, _ = evaluator.evaluate(None, [batch], "segmentation", NUM_CLASSES,
                                    originals=originals,
                                    predict_fn=lambda images: tf.constant(logits))
    labels = np.concatenate([m.ravel() for m, _ in references])
    preds = np.concatenate([p.ravel() for _, p in references])
    expected = _reference_miou(labels, preds, NUM_CLASSES)
    assert metrics["mIoU"] == pytest.approx(expected, abs=1e-12)
    model_res = _reference_miou(batch["segmentation_masks"].numpy()[..., 0],
                                np.argmax(logits, -1), NUM_CLASSES)
    assert metrics["mIoU_model_resolution"] == pytest.approx(model_res, abs=1e-12)
    assert abs(expected - model_res) > 1e-3  # the case tells the two protocols apart
    # The cheaper model-resolution number is still available on its own.
    cheap, _ = evaluator.evaluate(None, [batch], "segmentation", NUM_CLASSES,
                                  mask_resolution="model",
                                  predict_fn=lambda images: tf.constant(logits))
    assert cheap["mIoU"] == pytest.approx(model_res, abs=1e-12)


def test_original_resolution_needs_originals():
    batch, logits, _, _ = _case()
    with pytest.raises(ValueError, match="needs `originals`"):
        evaluator.evaluate(None, [batch], "segmentation", NUM_CLASSES,
                           mask_resolution="original",
                           predict_fn=lambda images: tf.constant(logits))


def test_logits_to_original_crops_padding_and_follows_output_stride():
    info = np.array([[16, 12], [8, 8], [0.5, 0.5], [0, 0]], np.float32)
    logits = np.zeros((4, 4, 2), np.float32)  # stride 2 relative to the 8x8 input
    logits[:, :3, 1] = 1.0
    logits[:, 3:, 0] = 5.0  # padding columns must not leak into the image
    out = evaluator.logits_to_original(logits, info, (8, 8)).numpy()
    assert out.shape == (16, 12, 2)
    assert np.all(np.argmax(out, -1) == 1)
