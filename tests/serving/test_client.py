"""REST/gRPC client: TF Serving's documented request and response formats, and clear errors.

TF Serving itself is not installable here, so local stand-ins answer: an `http.server` that
records the request and replies like TF Serving's REST API (documented at
https://www.tensorflow.org/tfx/serving/api_rest), and an in-process gRPC server implementing
`tensorflow.serving.PredictionService`.
"""

import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent import futures

import numpy as np
import pytest

from rethink_tf.serving import client

JPEG = b"\xff\xd8\xff\xe0 fake jpeg bytes"
PNG = b"\x89PNG\r\n\x1a\n fake png bytes"

# A TF Serving row-format response of the detection signature for 2 images, 2 detections max.
ROW_RESPONSE = {"predictions": [
    {"detection_boxes": [[1.0, 2.0, 30.5, 40.0], [0.0, 0.0, 0.0, 0.0]],
     "detection_classes": [7, -1], "detection_scores": [0.9, 0.0], "num_detections": 1,
     "image_sizes": [96, 160]},
    {"detection_boxes": [[5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]],
     "detection_classes": [1, 2], "detection_scores": [0.8, 0.5], "num_detections": 2,
     "image_sizes": [128, 128]},
]}


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rest_row_body_is_tf_servings_instances_form():
    body = client.rest_predict_body([JPEG, PNG])
    assert body == {"signature_name": "serving_default",
                    "instances": [{"b64": base64.b64encode(JPEG).decode()},
                                  {"b64": base64.b64encode(PNG).decode()}]}
    # Valid JSON, and the bytes come back exactly.
    decoded = json.loads(json.dumps(body))
    assert [base64.b64decode(i["b64"]) for i in decoded["instances"]] == [JPEG, PNG]


def test_rest_columnar_body_names_the_signature_input():
    body = client.rest_predict_body([JPEG], signature_name="serving_default", columnar=True)
    assert body == {"signature_name": "serving_default",
                    "inputs": {"encoded_images": [{"b64": base64.b64encode(JPEG).decode()}]}}


def test_rest_url():
    assert (client.rest_predict_url("localhost:8501", "digits")
            == "http://localhost:8501/v1/models/digits:predict")
    assert (client.rest_predict_url("http://h:1/", "digits", version=3)
            == "http://h:1/v1/models/digits/versions/3:predict")


def test_row_and_columnar_responses_give_the_same_arrays():
    rows = client.parse_rest_response(ROW_RESPONSE)
    columns = client.parse_rest_response({"outputs": {
        k: [r[k] for r in ROW_RESPONSE["predictions"]] for k in ROW_RESPONSE["predictions"][0]}})
    assert set(rows) == set(columns) == set(ROW_RESPONSE["predictions"][0])
    for key in rows:
        np.testing.assert_array_equal(rows[key], columns[key])
    assert rows["detection_boxes"].shape == (2, 2, 4)
    results = client.split_results(rows, labels=[str(d) for d in range(10)])
    assert results[0] == {"image_size": [96, 160], "detections": [
        {"box": [1.0, 2.0, 30.5, 40.0], "class": 7, "label": "7", "score": 0.9}]}
    assert [d["label"] for d in results[1]["detections"]] == ["1", "2"]
    with pytest.raises(client.ServingError, match="Servable not found"):
        client.parse_rest_response({"error": "Servable not found for request: Latest(x)"})


class _FakeServing:
    """A local HTTP server answering every POST with (status, JSON body); records requests."""

    def __init__(self, status, body):
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                fake.requests.append((self.path, json.loads(self.rfile.read(length))))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_predict_rest_sends_documented_body_and_parses_the_answer():
    with _FakeServing(200, ROW_RESPONSE) as server:
        outputs = client.predict_rest(server.address, "digits", [JPEG, PNG], version=2)
    path, body = server.requests[0]
    assert path == "/v1/models/digits/versions/2:predict"
    assert body == client.rest_predict_body([JPEG, PNG])
    np.testing.assert_array_equal(outputs["num_detections"], [1, 2])


def test_predict_rest_reports_tf_serving_errors():
    error = {"error": "Servable not found for request: Latest(digits)"}
    with _FakeServing(404, error) as server:
        with pytest.raises(client.ServingError,
                           match=r"answered HTTP 404: Servable not found for request"):
            client.predict_rest(server.address, "digits", [JPEG])


def test_predict_rest_reports_an_unreachable_server():
    port = _closed_port()
    with pytest.raises(client.ServingError, match=rf"cannot reach .*127.0.0.1:{port}.*running"):
        client.predict_rest(f"127.0.0.1:{port}", "digits", [JPEG], timeout=5)


def _run_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "rethink_tf.serving.client", *args],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=os.path.join(os.path.dirname(__file__), "..", ".."))


def test_cli_prints_detections_and_writes_json(tmp_path):
    image_a, image_b = tmp_path / "a.jpg", tmp_path / "b.png"
    image_a.write_bytes(JPEG)
    image_b.write_bytes(PNG)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit{d}\n" for d in range(10)))
    with _FakeServing(200, ROW_RESPONSE) as server:
        result = _run_cli(f"--server={server.address}", "--model=digits", f"--labels={labels}",
                          f"--output={tmp_path / 'out.json'}", str(image_a), str(image_b))
    assert result.returncode == 0, result.stderr
    assert "digit7" in result.stdout and "0.900" in result.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved[str(image_b)]["detections"][1]["label"] == "digit2"


def test_cli_exits_with_a_clear_error_when_unreachable(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(JPEG)
    result = _run_cli(f"--server=127.0.0.1:{_closed_port()}", "--model=digits", str(image))
    assert result.returncode == 1
    assert "error: cannot reach TF Serving's REST API" in result.stderr


# ------------------------------------------------------------------------------------------
# gRPC
# ------------------------------------------------------------------------------------------

@pytest.fixture
def grpc_server():
    """Starts a PredictionService stand-in; yields (address, servicer)."""
    grpc = pytest.importorskip("grpc")
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self):
            self.requests = []

        def Predict(self, request, context):  # noqa: N802 (gRPC's name)
            self.requests.append(request)
            if request.model_spec.name != "digits":
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Servable not found for request: Latest({request.model_spec.name})")
            images = tf.make_ndarray(request.inputs["encoded_images"])
            response = predict_pb2.PredictResponse()
            response.outputs["num_detections"].CopyFrom(
                tf.make_tensor_proto(np.arange(len(images), dtype=np.int32)))
            response.outputs["image_sizes"].CopyFrom(
                tf.make_tensor_proto(np.full((len(images), 2), 64, np.int32)))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = Servicer()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_grpc_request_and_response(grpc_server):
    import tensorflow as tf
    address, servicer = grpc_server
    outputs = client.predict_grpc(address, "digits", [JPEG, PNG], version=4, timeout=10)
    request = servicer.requests[0]
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 4
    proto = request.inputs["encoded_images"]
    assert proto.dtype == tf.string.as_datatype_enum
    assert [d.size for d in proto.tensor_shape.dim] == [2]
    assert list(proto.string_val) == [JPEG, PNG]
    np.testing.assert_array_equal(outputs["num_detections"], [0, 1])
    assert outputs["image_sizes"].shape == (2, 2)


def test_grpc_reports_server_errors_and_unreachable_servers(grpc_server):
    address, _ = grpc_server
    with pytest.raises(client.ServingError, match=r"answered NOT_FOUND: Servable not found"):
        client.predict_grpc(address, "other", [JPEG], timeout=10)
    port = _closed_port()
    with pytest.raises(client.ServingError, match=rf"cannot reach TF Serving's gRPC API at "
                                                  rf"127.0.0.1:{port}: UNAVAILABLE"):
        client.predict_grpc(f"127.0.0.1:{port}", "digits", [JPEG], timeout=10)
