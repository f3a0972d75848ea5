"""Every command the README shows, run as a user runs it: `python -m ...` in a subprocess.

On the tiny `digit_scenes` data, with tiny models (`--config.*` overrides). The step-by-step
chain (pre-train -> teacher -> evaluate -> pseudo labels -> student -> evaluate -> export ->
REST and gRPC clients against the exported SavedModel -> pseudo labels from the SavedModel) is
one test, so that pytest-xdist never splits it over workers and trains the same models twice;
the other commands are independent tests (the segmentation main job with two rounds is marked
slow). Also here: the convention that only the mains define absl flags (a library module that
defines them at import breaks every main that imports it).
"""

import base64
import glob
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "digits"
STDERR_TAIL = 4000

# Tiny-model overrides, as tests/training/test_trainer.py's tiny_config sets them.
_TRAIN = {"train.steps": 2, "train.batch_size": 4, "train.warmup_steps": 1,
          "train.checkpoint_every": 2, "train.log_every": 1, "train.verbose": 0,
          "eval.batch_size": 8, "eval.num_images": 8, "dataset.shuffle_buffer": 16,
          "model.backbone": "resnet_tiny"}
TINY = {
    "detection": {**_TRAIN, "dataset.name": "digit_scenes/detection_tiny",
                  "dataset.image_size": 64, "model.fpn_filters": 8, "model.head_filters": 8,
                  "model.head_depth": 1, "eval.tb_images": 2},
    "segmentation": {**_TRAIN, "dataset.name": "digit_scenes/detection_tiny",
                     "dataset.image_size": 64, "model.aspp_filters": 8,
                     "model.projection_filters": 8, "eval.tb_images": 2},
    "classification": {**_TRAIN, "dataset.name": "digit_scenes/classification_tiny",
                       "dataset.image_size": 32},
}
_TINY_UNLABELED = {"self_training.unlabeled": "digit_scenes/detection_tiny",
                   "self_training.unlabeled_split": "unlabeled[:8]",
                   # An untrained teacher: keep whatever it finds, so the student has labels.
                   "self_training.score_threshold": 0.0, "self_training.pixel_threshold": 0.0}


def overrides(kind, prefix="config", **extra):
    """`--<prefix>.<field>=<value>` flags making a config of `kind` tiny."""
    values = {**TINY[kind], **extra}
    return [f"--{prefix}.{field}={value}" for field, value in values.items()]


@pytest.fixture(scope="module")
def env(digit_scenes_data_dir):
    """The subprocesses' environment: TFDS finds the tiny datasets without --data_dir."""
    return {**os.environ, "TFDS_DATA_DIR": digit_scenes_data_dir, "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(module, *args, env, timeout=600):
    """Runs `python -m <module> <args>`; fails with the command and its stderr tail."""
    command = [sys.executable, "-m", module, *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"`{' '.join(command)}` exited with {result.returncode}; stderr tail:\n"
        f"{result.stderr[-STDERR_TAIL:]}\nstdout tail:\n{result.stdout[-1000:]}")
    # A function AutoGraph cannot convert is our bug, and its warning is noise to every user.
    output = result.stderr + result.stdout
    assert "AutoGraph could not transform" not in output, (
        f"`{' '.join(command)}` logs AutoGraph warnings:\n"
        f"{output[output.index('AutoGraph could not'):][:STDERR_TAIL]}")
    return result


def read_json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def assert_workdir(workdir, metric_keys, step=2):
    """A finished run's workdir: config.json, checkpoints/, tb/ and metrics.json."""
    for name in ("config.json", "checkpoints", "tb", "metrics.json"):
        assert os.path.exists(os.path.join(workdir, name)), f"{workdir} has no {name}"
    assert glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.index")), workdir
    assert glob.glob(os.path.join(workdir, "tb", "*", "events.*")), workdir
    metrics = read_json(workdir, "metrics.json")
    assert metrics["step"] == step, metrics
    missing = set(metric_keys) - set(metrics)
    assert not missing, f"{workdir}/metrics.json lacks {missing}: {sorted(metrics)}"
    return metrics


# ------------------------------------------------------------------------------------------
# Absl flags are defined by the mains only
# ------------------------------------------------------------------------------------------

def main_modules():
    """The mains: `rethink_tf/<verb>.py` modules that run an absl app."""
    mains = []
    for path in sorted(glob.glob(os.path.join(REPO, "rethink_tf", "*.py"))):
        with open(path) as f:
            if "app.run(" in f.read():
                mains.append("rethink_tf." + os.path.basename(path)[:-3])
    return mains


_FLAG_CHECK = r"""
import importlib, json, pkgutil, sys
from absl import flags
import rethink_tf

FLAGS = flags.FLAGS
mains = json.loads(sys.argv[1])


def ours():
    # Flags by defining module, for our modules only (TF, TFDS and absl define their own).
    return {module: sorted(f.name for f in defined)
            for module, defined in FLAGS.flags_by_module_dict().items()
            if defined and (module.startswith("rethink_tf") or module == "__main__")}


names = sorted(m.name for m in pkgutil.walk_packages(rethink_tf.__path__, "rethink_tf."))
for name in names:
    if name not in mains:
        importlib.import_module(name)
result = {"modules": names, "library_flags": ours(),
          "mains_imported_by_libraries": [m for m in mains if m in sys.modules],
          "main_flags": {}}
# Importing a main next to a library's flags could only add a DuplicateFlagError.
for main in mains if not result["library_flags"] else []:
    before = set(FLAGS)
    importlib.import_module(main)
    result["main_flags"][main] = ours()
    for name in set(FLAGS) - before:  # mains share names (--workdir): unregister before the next
        delattr(FLAGS, name)
print("RESULT " + json.dumps(result))
"""


def test_only_the_mains_define_absl_flags():
    mains = main_modules()
    assert {"rethink_tf.train", "rethink_tf.evaluate", "rethink_tf.pretrain",
            "rethink_tf.pseudo_label", "rethink_tf.export", "rethink_tf.pipeline"} <= set(mains)
    result = subprocess.run([sys.executable, "-c", _FLAG_CHECK, json.dumps(mains)], cwd=REPO,
                            capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-STDERR_TAIL:]
    found = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert "rethink_tf.data.show" in found["modules"], "the walk must see every module"
    assert found["library_flags"] == {}, (
        "library modules define absl flags at import (define them in the main, or in a "
        f"define_flags() called under `if __name__ == '__main__'`): {found['library_flags']}")
    assert found["mains_imported_by_libraries"] == [], "a library imports a main"
    for main, owners in found["main_flags"].items():
        assert set(owners) == {main}, f"importing {main} defines flags of {owners}"


def test_every_readme_command_has_a_test():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    shown = set(re.findall(r"python -m (rethink_tf(?:\.\w+)+)", readme))
    tested = {"rethink_tf.pretrain", "rethink_tf.train", "rethink_tf.evaluate",
              "rethink_tf.pseudo_label", "rethink_tf.export", "rethink_tf.pipeline",
              "rethink_tf.data.show", "rethink_tf.serving.client"}
    assert shown <= tested, f"README commands without a test here: {shown - tested}"
    scripts = set(re.findall(r"^\s*python (experiments/\S+\.py)", readme, re.M))
    # Each with a subprocess test at a tiny size (tests/test_bench_*.py).
    assert scripts <= {"experiments/bench/train_step.py", "experiments/bench/accelerator.py"}, \
        f"README commands without a test: {scripts}"


# ------------------------------------------------------------------------------------------
# Step by step: pre-train -> teacher -> pseudo labels -> student -> evaluate -> export -> serve
# ------------------------------------------------------------------------------------------

def write_coco_dataset(root, data_dir, num_images=8):
    """The tiny train scenes as a COCO-format dataset (PNG files + annotations JSON).

    Returns:
        The `coco_json:<annotations.json>:<image_dir>` source name.
    """
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    names = sources.info("digit_scenes/detection_tiny", data_dir=data_dir).class_names[
        "detection"]
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir)
    images, annotations = [], []
    examples = sources.load("digit_scenes/detection_tiny", "train", data_dir=data_dir)
    for image_id, example in enumerate(examples.take(num_images).as_numpy_iterator(), 1):
        file_name = f"scene_{image_id}.png"
        Image.fromarray(example["image"]).save(os.path.join(image_dir, file_name))
        height, width = example["image"].shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height,
                       "width": width})
        for (x0, y0, x1, y1), cls in zip(example["boxes"].tolist(), example["classes"]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(cls) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}, f)
    return f"coco_json:{path}:{image_dir}"


def write_scenes(root, data_dir):
    """Two test scenes in `root`: a PNG at 128x128 and a JPEG resized to 96x160.

    Returns:
        {path: (height, width)}.
    """
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    examples = list(sources.load("digit_scenes/detection_tiny", "test", data_dir=data_dir)
                    .take(2).as_numpy_iterator())
    os.makedirs(root)
    png, jpeg = os.path.join(root, "scene.png"), os.path.join(root, "scene.jpg")
    Image.fromarray(examples[0]["image"]).save(png)
    Image.fromarray(examples[1]["image"]).resize((160, 96)).save(jpeg, quality=95)
    return {png: (128, 128), jpeg: (96, 160)}


class SavedModelServing:
    """TF Serving stand-ins running an exported SavedModel: REST (http.server) and gRPC.

    They answer as TF Serving does (https://www.tensorflow.org/tfx/serving/api_rest):
    `POST /v1/models/<name>[/versions/<v>]:predict` with the row (`instances`, answered with
    `predictions`) or columnar (`inputs`, answered with `outputs`) form, base64 `{"b64"}`
    binary values, and `{"error": ...}` with HTTP 404 for an unknown model or version.
    """

    def __init__(self, base_path, name):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        self.tf = tf
        self.name = name
        self.versions = {int(v): tf.saved_model.load(os.path.join(base_path, v))
                         for v in os.listdir(base_path) if v.isdigit()}
        self.rest_paths = []
        self.grpc_requests = []

    def predict(self, version, signature_name, images):
        """Runs the signature on encoded images; returns {output name: numpy array}."""
        model = self.versions[version if version is not None else max(self.versions)]
        fn = model.signatures[signature_name]
        outputs = fn(encoded_images=self.tf.constant(images, self.tf.string))
        return {k: v.numpy() for k, v in outputs.items()}

    def rest_answer(self, path, body):
        """(HTTP status, JSON answer) of a REST `:predict` request."""
        match = re.fullmatch(rf"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", path)
        version = int(match.group(2)) if match and match.group(2) else None
        if not match or match.group(1) != self.name or (
                version is not None and version not in self.versions):
            return 404, {"error": f"Servable not found for request: {path}"}
        signature = body.get("signature_name", "serving_default")
        if "instances" in body:
            instances = body["instances"]
        else:
            inputs = body["inputs"]
            instances = inputs["encoded_images"] if isinstance(inputs, dict) else inputs
        images = [base64.b64decode(i["b64"]) for i in instances]
        outputs = self.predict(version, signature, images)
        if "instances" in body:
            return 200, {"predictions": [{k: v[i].tolist() for k, v in outputs.items()}
                                         for i in range(len(images))]}
        return 200, {"outputs": {k: v.tolist() for k, v in outputs.items()}}

    def rest(self):
        """Starts the REST server; returns its "HOST:PORT"."""
        serving = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                serving.rest_paths.append(self.path)
                status, answer = serving.rest_answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.http.server_address[1]}"

    def grpc(self):
        """Starts a `tensorflow.serving.PredictionService`; returns its "HOST:PORT"."""
        serving, tf = self, self.tf

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (gRPC's name)
                serving.grpc_requests.append(request)
                spec = request.model_spec
                version = spec.version.value if spec.HasField("version") else None
                if spec.name != serving.name or (
                        version is not None and version not in serving.versions):
                    context.abort(grpc.StatusCode.NOT_FOUND,
                                  f"Servable not found for request: {spec.name}")
                images = list(tf.make_ndarray(request.inputs["encoded_images"]))
                outputs = serving.predict(version, spec.signature_name or "serving_default",
                                          images)
                response = predict_pb2.PredictResponse()
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
                return response

        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            Servicer(), self.grpc_server)
        port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()
        return f"127.0.0.1:{port}"

    def stop(self):
        if hasattr(self, "http"):
            self.http.shutdown()
            self.http.server_close()
        if hasattr(self, "grpc_server"):
            self.grpc_server.stop(None)


def check_client_results(path, scenes, serving, labels):
    """The client's --output JSON holds, per image, what the SavedModel computes."""
    results = read_json(path)
    assert set(results) == set(scenes)
    for image_path, (height, width) in scenes.items():
        result = results[image_path]
        assert result["image_size"] == [height, width], image_path
        with open(image_path, "rb") as f:
            expected = serving.predict(None, "serving_default", [f.read()])
        n = int(expected["num_detections"][0])
        assert n > 0, "export with --score_threshold=0 keeps detections to compare"
        assert len(result["detections"]) == n
        boxes = np.array([d["box"] for d in result["detections"]])
        np.testing.assert_allclose(boxes, expected["detection_boxes"][0][:n], atol=0.01)
        # Boxes are (xmin, ymin, xmax, ymax) in the original image's pixels.
        assert (boxes[:, 2] <= width + 0.01).all() and (boxes[:, 3] <= height + 0.01).all()
        assert (boxes[:, :2] <= boxes[:, 2:] + 0.01).all()
        classes = expected["detection_classes"][0][:n]
        assert [d["class"] for d in result["detections"]] == classes.tolist()
        assert [d["label"] for d in result["detections"]] == [labels[c] for c in classes]


def test_readme_step_by_step(tmp_path, env, digit_scenes_data_dir):
    """README "Step by step" (and "Your own COCO-format data", "Serving"), in order."""
    runs = str(tmp_path)
    imagenet, teacher, pseudo, student = (os.path.join(runs, d) for d in
                                          ("imagenet", "teacher", "pseudo", "student"))

    run("rethink_tf.pretrain", "--config=experiments/configs/pretrain_classification.py",
        f"--workdir={imagenet}", *overrides("classification"), env=env)
    assert_workdir(imagenet, ["top1"])
    assert os.path.exists(os.path.join(imagenet, "backbone.weights.h5"))

    # The teacher learns from the user's own COCO-format data, from the pre-trained backbone.
    coco = write_coco_dataset(os.path.join(runs, "mine"), digit_scenes_data_dir)
    result = run("rethink_tf.train", "--config=experiments/configs/detection.py",
                 f"--config.init=pretrained:{imagenet}", f"--workdir={teacher}",
                 *overrides("detection", **{"dataset.name": coco}),
                 "--config.dataset.train_split=all", "--config.dataset.eval_split=all", env=env)
    assert os.path.join(imagenet, "backbone.weights.h5") in result.stdout + result.stderr
    config = read_json(teacher, "config.json")
    assert config["init"] == f"pretrained:{imagenet}" and config["dataset"]["name"] == coco
    assert_workdir(teacher, ["AP", "AP50", "AP75"])
    os.remove(os.path.join(teacher, "metrics.json"))
    run("rethink_tf.evaluate", f"--workdir={teacher}", env=env)
    metrics = assert_workdir(teacher, ["AP", "AP50"])
    assert metrics["split"] == "all"

    # As the README: the student config is the one source of the pseudo-labelling settings.
    run("rethink_tf.pseudo_label", "--config=experiments/configs/detection.py:student",
        f"--teacher={teacher}", f"--output={pseudo}",
        "--config.self_training.unlabeled=digit_scenes/detection_tiny",
        "--config.self_training.unlabeled_split=unlabeled",
        "--config.self_training.score_threshold=0.0", "--num_output_shards=2",
        "--batch_size=8", env=env)
    manifest = read_json(pseudo, "manifest.json")
    assert manifest["complete"] and manifest["num_images"] == 48, manifest
    assert manifest["num_boxes"] > 0 and len(manifest["per_class"]) > 0
    shards = sorted(glob.glob(os.path.join(pseudo, "*.tfrecord")))
    assert [os.path.basename(s) for s in shards] == [
        "pseudo-00000-of-00002.tfrecord", "pseudo-00001-of-00002.tfrecord"]

    run("rethink_tf.train", "--config=experiments/configs/detection.py:student",
        f"--config.self_training.pseudo_labels={pseudo}", f"--workdir={student}",
        *overrides("detection"), env=env)
    config = read_json(student, "config.json")
    assert config["self_training"]["pseudo_labels"] == pseudo
    assert_workdir(student, ["AP", "AP50"])

    result = run("rethink_tf.evaluate", f"--workdir={student}", "--split=test", env=env)
    metrics = read_json(student, "metrics_test.json")
    assert metrics["split"] == "test" and metrics["step"] == 2 and "AP" in metrics
    assert json.loads(result.stdout[result.stdout.index("{"):])["AP"] == metrics["AP"]

    base = os.path.join(runs, "serving", MODEL)
    # Threshold 0 so that the 2-step model returns detections for the clients to compare.
    result = run("rethink_tf.export", f"--workdir={student}", f"--output={base}",
                 "--score_threshold=0.0", env=env)
    version = os.path.join(base, "1")
    assert f"Exported {version}" in result.stdout
    for name in ("saved_model.pb", "variables", "assets/labels.txt",
                 "assets.extra/export_info.json", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(version, name)), name
    with open(os.path.join(version, "assets", "labels.txt")) as f:
        labels = [line.rstrip("\n") for line in f]
    assert len(labels) == 10

    photos = os.path.join(runs, "photos")
    scenes = write_scenes(photos, digit_scenes_data_dir)
    serving = SavedModelServing(base, MODEL)
    try:
        rest, grpc_address = serving.rest(), serving.grpc()
        label_flag = f"--labels={os.path.join(version, 'assets', 'labels.txt')}"
        for flags, address, out in [([], rest, "rest.json"), (["--version=1"], rest, "v1.json"),
                                    (["--protocol=grpc"], grpc_address, "grpc.json")]:
            output = os.path.join(runs, out)
            result = run("rethink_tf.serving.client", f"--server={address}", f"--model={MODEL}",
                         *flags, label_flag, f"--output={output}", *scenes, env=env)
            for path in scenes:
                assert path in result.stdout
            check_client_results(output, scenes, serving, labels)
        assert serving.rest_paths == [f"/v1/models/{MODEL}:predict",
                                      f"/v1/models/{MODEL}/versions/1:predict"]
        assert [r.model_spec.name for r in serving.grpc_requests] == [MODEL]
    finally:
        serving.stop()

    # The exported SavedModel as a teacher, on a folder of the user's images.
    with open(os.path.join(photos, "broken.jpg"), "wb") as f:
        f.write(b"not an image")
    run("rethink_tf.pseudo_label", f"--teacher={version}", f"--unlabeled=images:{photos}/*",
        f"--output={os.path.join(runs, 'pseudo_photos')}", env=env)
    manifest = read_json(runs, "pseudo_photos", "manifest.json")
    assert manifest["complete"] and manifest["num_images"] == 2, manifest
    assert manifest["skipped_unreadable"] == 1, manifest


# ------------------------------------------------------------------------------------------
# The other commands
# ------------------------------------------------------------------------------------------

def test_pretrain_simclr_and_probe_only(tmp_path, env):
    workdir = str(tmp_path / "simclr")
    run("rethink_tf.pretrain", "--config=experiments/configs/pretrain_simclr.py",
        f"--workdir={workdir}", *overrides("classification"), "--config.simclr.hidden_dim=16",
        "--config.simclr.projection_dim=8", "--config.simclr.probe_epochs=2", env=env)
    assert_workdir(workdir, ["top1"])
    assert os.path.exists(os.path.join(workdir, "backbone.weights.h5"))
    result = run("rethink_tf.pretrain", "--config=experiments/configs/pretrain_simclr.py",
                 f"--workdir={workdir}", "--probe_only", *overrides("classification"),
                 "--config.simclr.probe_epochs=2", env=env)
    probe = read_json(workdir, "probe.json")
    assert f"linear probe top1={probe['top1']:.4f}" in result.stdout
    assert 0.0 <= probe["top1"] <= 1.0


def test_show_writes_the_grid(tmp_path, env):
    out = str(tmp_path / "grid.png")
    result = run("rethink_tf.data.show", "--dataset=digit_scenes/detection_tiny", "--policy=s4",
                 f"--out={out}", "--rows=2", "--cols=3", "--image_size=64", env=env)
    assert f"wrote {out}" in result.stdout
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    assert grid.std() > 10, "the grid must show images"


def test_glyph_corpus_commands(tmp_path, env, digit_scenes_data_dir):
    """README: the glyph corpus's grid, and "ImageNet", "ImageNet++" (noisy student) and SimCLR
    on it (`:glyphs*` variants, on the tiny glyph config)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import digit_scenes  # pylint: disable=g-import-not-at-top
    tfds.builder("digit_scenes", config=digit_scenes.tiny_config("glyphs"),
                 data_dir=digit_scenes_data_dir).download_and_prepare()
    out = str(tmp_path / "glyphs_grid.png")
    result = run("rethink_tf.data.show", "--dataset=digit_scenes/glyphs_tiny", "--split=train",
                 "--policy=none", "--rows=2", "--cols=4", "--image_size=64", f"--out={out}",
                 env=env)
    assert f"wrote {out}" in result.stdout
    assert np.asarray(Image.open(out)).std() > 10, "the grid must show images"
    glyphs = overrides("classification", **{"dataset.name": "digit_scenes/glyphs_tiny"})
    imagenet = str(tmp_path / "imagenet_glyphs")
    run("rethink_tf.pretrain", "--config=experiments/configs/pretrain_classification.py:glyphs",
        f"--workdir={imagenet}", *glyphs, env=env)
    assert_workdir(imagenet, ["top1"])
    assert read_json(imagenet, "config.json")["dataset"]["name"] == "digit_scenes/glyphs_tiny"
    assert read_json(imagenet, "config.json")["dataset"]["hflip"] == "auto"
    # "ImageNet++" by noisy student: the "ImageNet" model labels the unlabeled split, a noised
    # student trains on both.
    pseudo = str(tmp_path / "glyphs_pseudo")
    run("rethink_tf.pseudo_label", f"--teacher={imagenet}", "--unlabeled=digit_scenes/glyphs_tiny",
        "--split=unlabeled", "--score_threshold=0.0", f"--output={pseudo}", "--quality", env=env)
    manifest = read_json(pseudo, "manifest.json")
    assert manifest["task"] == "classification" and manifest["num_images"] == 31, manifest
    rows = read_json(pseudo, "quality.json")["thresholds"]  # accuracy of the kept labels
    assert rows and all(0.0 <= r["kept_fraction"] <= 1.0 and "accuracy" in r for r in rows)
    plus = str(tmp_path / "imagenet_plus_glyphs")
    run("rethink_tf.pretrain",
        "--config=experiments/configs/pretrain_classification.py:glyphs_student",
        f"--config.self_training.pseudo_labels={pseudo}", f"--workdir={plus}", *glyphs, env=env)
    assert_workdir(plus, ["top1"])
    assert os.path.exists(os.path.join(plus, "backbone.weights.h5"))
    simclr = str(tmp_path / "simclr_glyphs")
    run("rethink_tf.pretrain", "--config=experiments/configs/pretrain_simclr.py:glyphs",
        f"--workdir={simclr}", *glyphs, "--config.simclr.hidden_dim=16",
        "--config.simclr.projection_dim=8", "--config.simclr.probe_epochs=2", env=env)
    assert 0.0 <= read_json(simclr, "metrics.json")["top1"] <= 1.0
    assert os.path.exists(os.path.join(simclr, "backbone.weights.h5"))


def test_pipeline_main_job(tmp_path, env):
    """`python -m rethink_tf.pipeline --workdir=DIR` with its default configs made tiny."""
    workdir = str(tmp_path / "rt")
    run("rethink_tf.pipeline", f"--workdir={workdir}", "--quality_images=8",
        *overrides("detection", **_TINY_UNLABELED),
        *overrides("classification", prefix="pretrain_config"), env=env)
    assert os.path.exists(os.path.join(workdir, "pretrain", "backbone.weights.h5"))
    assert_workdir(os.path.join(workdir, "pretrain"), ["top1"])
    for stage in ("teacher", "student"):
        assert_workdir(os.path.join(workdir, stage), ["AP", "AP50"])
        config = read_json(workdir, stage, "config.json")
        assert config["init"] == f"pretrained:{os.path.join(workdir, 'pretrain')}", stage
    manifest = read_json(workdir, "pseudo", "manifest.json")
    assert manifest["complete"] and manifest["num_images"] == 8
    assert os.path.exists(os.path.join(workdir, "pseudo", "quality.json"))
    assert glob.glob(os.path.join(workdir, "serving", "*", "1", "saved_model.pb"))
    with open(os.path.join(workdir, "report.md")) as f:
        report = f.read()
    assert "| teacher |" in report and "| student (round 1) |" in report


@pytest.mark.slow
def test_pipeline_segmentation_rand_init_two_rounds(tmp_path, env):
    """README's variants: `--config=.../segmentation.py:student`, `--nopretrain`, `--rounds=2`."""
    workdir = str(tmp_path / "rt_seg")
    run("rethink_tf.pipeline", "--config=experiments/configs/segmentation.py:student",
        f"--workdir={workdir}", "--nopretrain", "--rounds=2", "--quality_images=8",
        *overrides("segmentation", **_TINY_UNLABELED), env=env)
    assert not os.path.exists(os.path.join(workdir, "pretrain"))
    for stage in ("teacher", "student", "round2/student"):
        assert_workdir(os.path.join(workdir, stage), ["mIoU"])
    assert read_json(workdir, "pseudo", "manifest.json")["task"] == "segmentation"
    assert glob.glob(os.path.join(workdir, "serving", "*", "1", "saved_model.pb"))


_TINY_JOINT = {"joint.dataset": "digit_scenes/classification_tiny", "joint.batch_size": 4,
               "joint.image_size": 32}


def test_joint_training_commands(tmp_path, env):
    """README "Joint training": `train --config=detection.py:joint` and `pipeline --joint
    --nopretrain` (teacher -> pseudo labels -> joint student)."""
    workdir = str(tmp_path / "joint")
    run("rethink_tf.train", "--config=experiments/configs/detection.py:joint",
        f"--workdir={workdir}", *overrides("detection", **_TINY_JOINT), env=env)
    assert_workdir(workdir, ["AP", "AP50"])
    assert read_json(workdir, "config.json")["joint"]["dataset"] == _TINY_JOINT["joint.dataset"]
    pipeline_dir = str(tmp_path / "rt_joint")
    run("rethink_tf.pipeline", "--joint", "--nopretrain", f"--workdir={pipeline_dir}",
        "--quality_images=8", *overrides("detection", **_TINY_UNLABELED, **_TINY_JOINT),
        env=env, timeout=1200)  # three trainings, labelling and export in one command
    assert read_json(pipeline_dir, "teacher", "config.json")["joint"]["dataset"] == ""
    student = read_json(pipeline_dir, "student", "config.json")
    assert student["joint"]["dataset"] == _TINY_JOINT["joint.dataset"]
    assert student["self_training"]["pseudo_labels"]
    assert_workdir(os.path.join(pipeline_dir, "student"), ["AP", "AP50"])
    with open(os.path.join(pipeline_dir, "report.md")) as f:
        assert "| joint student, + digit_scenes/classification_tiny (round 1) |" in f.read()
