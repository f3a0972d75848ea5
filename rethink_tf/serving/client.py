"""REST and gRPC clients for a model exported by `rethink_tf.export` and served by TF Serving.

    python -m rethink_tf.serving.client --server=localhost:8501 --model=detector a.jpg b.png
    python -m rethink_tf.serving.client --server=localhost:8500 --model=detector --protocol=grpc \
        --labels=BASE/1/assets/labels.txt --output=detections.json a.jpg

The library functions build TF Serving's documented REST bodies
(https://www.tensorflow.org/tfx/serving/api_rest):

    row format:      {"signature_name": "serving_default", "instances": [{"b64": "..."}, ...]}
    columnar format: {"signature_name": "serving_default",
                      "inputs": {"encoded_images": [{"b64": "..."}, ...]}}

and turn either response form ({"predictions": [...]} or {"outputs": {...}}) back into a dict
of numpy arrays keyed by the signature's output names. Both protocols raise `ServingError`
with a message saying what went wrong: the server cannot be reached, or it answered an error.
"""

import base64
import json
import os
import socket
import sys
import urllib.error
import urllib.request

import numpy as np
from absl import app
from absl import flags

SIGNATURE = "serving_default"
ENCODED_INPUT = "encoded_images"  # the input of `serving_default` (see serving/export.py)


class ServingError(RuntimeError):
    """The server could not be reached or answered an error."""


# ------------------------------------------------------------------------------------------
# REST
# ------------------------------------------------------------------------------------------

def b64(data):
    """TF Serving's JSON encoding of binary data: `{"b64": <base64 string>}`."""
    return {"b64": base64.b64encode(data).decode("ascii")}


def rest_predict_body(images, signature_name=SIGNATURE, columnar=False,
                      input_name=ENCODED_INPUT):
    """The JSON body (a dict) of a REST `:predict` request with encoded images.

    Args:
        images: list of encoded image bytes (JPEG, PNG, ...).
        signature_name: the signature to call.
        columnar: False for the row format (`instances`: one `{"b64": ...}` per image, valid
            because the signature has a single input), True for the columnar format (`inputs`:
            `{input_name: [...]}`).
        input_name: the signature's input name (columnar format only).

    Returns:
        A dict ready for `json.dumps`.
    """
    encoded = [b64(bytes(image)) for image in images]
    body = {"signature_name": signature_name}
    if columnar:
        body["inputs"] = {input_name: encoded}
    else:
        body["instances"] = encoded
    return body


def rest_predict_url(server, model, version=None):
    """`http://HOST:PORT/v1/models/MODEL[/versions/N]:predict`."""
    base = server if "://" in server else f"http://{server}"
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"{base.rstrip('/')}/v1/models/{model}{version_part}:predict"


def parse_rest_response(response):
    """A REST `:predict` response (dict) -> {output name: numpy array}.

    Handles the row form (`predictions`: a list of per-instance objects) and the columnar form
    (`outputs`: an object of batched tensors). A single unnamed output is returned under the
    key "output".

    Raises:
        ServingError: the response holds an `error` or neither form.
    """
    if "error" in response:
        raise ServingError(f"TF Serving answered an error: {response['error']}")
    if "outputs" in response:
        outputs = response["outputs"]
        if not isinstance(outputs, dict):
            return {"output": np.asarray(outputs)}
        return {name: np.asarray(value) for name, value in outputs.items()}
    if "predictions" in response:
        rows = response["predictions"]
        if not rows or not isinstance(rows[0], dict):
            return {"output": np.asarray(rows)}
        return {name: np.asarray([row[name] for row in rows]) for name in rows[0]}
    raise ServingError("TF Serving's response has neither 'predictions' nor 'outputs': "
                       f"{str(response)[:200]}")


def predict_rest(server, model, images, signature_name=SIGNATURE, version=None, timeout=60.0,
                 columnar=False):
    """Sends encoded images to TF Serving's REST API; returns {output name: numpy array}.

    Args:
        server: "HOST:PORT" of the REST port (8501 by default in TF Serving), or a URL.
        model: the served model name (TF Serving's MODEL_NAME).
        images: list of encoded image bytes.
        signature_name: signature to call.
        version: a model version; None = the latest.
        timeout: seconds.
        columnar: send the columnar (`inputs`) form instead of the row (`instances`) form.

    Raises:
        ServingError: unreachable server, HTTP error (with TF Serving's `error` message) or a
            response that is not TF Serving's.
    """
    url = rest_predict_url(server, model, version)
    if not images:
        raise ValueError("predict_rest needs at least one image")
    data = json.dumps(rest_predict_body(images, signature_name, columnar)).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise ServingError(f"TF Serving at {url} answered HTTP {e.code}: {detail}") from e
    except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise ServingError(f"cannot reach TF Serving's REST API at {url}: {reason} (is the "
                           "server running, and is this its --rest_api_port?)") from e
    try:
        response = json.loads(text)
    except ValueError as e:
        raise ServingError(f"{url} answered something that is not JSON: {text[:200]!r}") from e
    return parse_rest_response(response)


# ------------------------------------------------------------------------------------------
# gRPC
# ------------------------------------------------------------------------------------------

def _serving_apis():
    # pylint: disable=g-import-not-at-top
    try:
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError("the gRPC client needs tensorflow-serving-api: "
                          "pip install -e '.[serving]'") from e
    return predict_pb2, prediction_service_pb2_grpc


def grpc_predict_request(model, images, signature_name=SIGNATURE, version=None,
                         input_name=ENCODED_INPUT):
    """A `tensorflow.serving.PredictRequest` with the encoded images as a string [batch]."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    predict_pb2, _ = _serving_apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[input_name].CopyFrom(
        tf.make_tensor_proto([bytes(i) for i in images], dtype=tf.string, shape=[len(images)]))
    return request


def predict_grpc(server, model, images, signature_name=SIGNATURE, version=None, timeout=60.0):
    """Sends encoded images to TF Serving's gRPC API; returns {output name: numpy array}.

    Args:
        server: "HOST:PORT" of the gRPC port (8500 by default in TF Serving).
        model, images, signature_name, version, timeout: as for `predict_rest`.

    Raises:
        ServingError: the server is unreachable or answered an error status.
    """
    import grpc  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    _, service = _serving_apis()
    if not images:
        raise ValueError("predict_grpc needs at least one image")
    request = grpc_predict_request(model, images, signature_name, version)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = service.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServingError(f"cannot reach TF Serving's gRPC API at {server}: "
                                   f"{code.name}: {details} (is the server running, and is "
                                   "this its --port?)") from e
            raise ServingError(f"TF Serving at {server} answered {code.name}: {details}") from e
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def predict(server, model, images, protocol="rest", **kwargs):
    """`predict_rest` or `predict_grpc` by `protocol`."""
    if protocol == "rest":
        return predict_rest(server, model, images, **kwargs)
    if protocol == "grpc":
        return predict_grpc(server, model, images, **kwargs)
    raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")


# ------------------------------------------------------------------------------------------
# Results per image
# ------------------------------------------------------------------------------------------

def split_results(outputs, labels=None):
    """Batched outputs -> one JSON-ready dict per image.

    Detection: {"image_size", "detections": [{"box": [xmin, ymin, xmax, ymax], "class",
    "label", "score"}, ...]} (boxes in original pixels). Segmentation: {"image_size", "mask"
    (class ids, cropped to the image), "confidence"}.
    """
    def label(c):
        return labels[c] if labels is not None and 0 <= c < len(labels) else str(c)

    sizes = np.asarray(outputs["image_sizes"]).astype(int)
    results = []
    for i, (height, width) in enumerate(sizes):
        result = {"image_size": [int(height), int(width)]}
        if "detection_boxes" in outputs:
            n = int(outputs["num_detections"][i])
            result["detections"] = [
                {"box": [round(float(v), 2) for v in outputs["detection_boxes"][i][k]],
                 "class": int(outputs["detection_classes"][i][k]),
                 "label": label(int(outputs["detection_classes"][i][k])),
                 "score": round(float(outputs["detection_scores"][i][k]), 4)}
                for k in range(n)]
        elif "segmentation_masks" in outputs:
            mask = np.asarray(outputs["segmentation_masks"][i])[:height, :width]
            confidence = np.asarray(outputs["segmentation_confidence"][i])[:height, :width]
            result["mask"] = mask.astype(np.int32)
            result["confidence"] = confidence.astype(np.float32)
        results.append(result)
    return results


def format_result(name, result):
    """Human-readable lines for one image's result."""
    lines = [f"{name}  ({result['image_size'][0]}x{result['image_size'][1]})"]
    if "detections" in result:
        if not result["detections"]:
            lines.append("  no detections")
        for d in result["detections"]:
            box = ", ".join(f"{v:.1f}" for v in d["box"])
            lines.append(f"  {d['label']:>12s}  {d['score']:.3f}  [{box}]")
    elif "mask" in result:
        ids, counts = np.unique(result["mask"], return_counts=True)
        total = max(int(result["mask"].size), 1)
        lines.append("  " + ", ".join(f"class {c}: {n / total:.1%}" for c, n in zip(ids, counts)))
    return lines


def _jsonable(result):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}


FLAGS = flags.FLAGS


def define_flags():
    """Defines the command-line flags (only when run as a program: a library import must not
    claim names like --model or --output in its importer's flag namespace)."""
    flags.DEFINE_string("server", "localhost:8501",
                        "HOST:PORT of TF Serving (REST port 8501 or gRPC port 8500 by default).")
    flags.DEFINE_string("model", None, "Served model name (TF Serving's MODEL_NAME).")
    flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "REST (JSON + base64) or gRPC.")
    flags.DEFINE_string("signature", SIGNATURE, "Signature taking encoded images.")
    flags.DEFINE_integer("version", None, "Model version; default: the latest served.")
    flags.DEFINE_string("labels", None, "The export's assets/labels.txt, to print names.")
    flags.DEFINE_string("output", None, "Also write the results (per image) to this JSON file.")
    flags.DEFINE_float("timeout", 60.0, "Request timeout in seconds.")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give at least one image file")
    if not FLAGS.model:
        raise app.UsageError("--model is required")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise app.UsageError(f"no such image file(s): {', '.join(missing)}")
    labels = None
    if FLAGS.labels:
        with open(FLAGS.labels) as f:
            labels = [line.rstrip("\n") for line in f]
    images = []
    for path in paths:
        with open(path, "rb") as f:
            images.append(f.read())
    try:
        outputs = predict(FLAGS.server, FLAGS.model, images, FLAGS.protocol,
                          signature_name=FLAGS.signature, version=FLAGS.version,
                          timeout=FLAGS.timeout)
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = split_results(outputs, labels)
    for path, result in zip(paths, results):
        print("\n".join(format_result(path, result)))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({p: _jsonable(r) for p, r in zip(paths, results)}, f)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
