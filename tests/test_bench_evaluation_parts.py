"""experiments/bench/evaluation_parts.py on a tiny trained workdir: every part is timed, the
parts score what the whole evaluation scores, and the workdir is left as it was."""

import json
import os
import subprocess
import sys

from rethink_tf.training import trainer

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluation_parts_times_every_part_and_writes_nothing_in_the_workdir(
        tmp_path, digit_scenes_data_dir):
    workdir = str(tmp_path / "teacher")
    trainer.train(tiny_config("detection", digit_scenes_data_dir), workdir)
    before = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
              for d, _, files in os.walk(workdir) for f in files}
    out = tmp_path / "parts.json"
    result = subprocess.run(
        [sys.executable, "experiments/bench/evaluation_parts.py", f"--workdir={workdir}",
         "--images=8", "--ab_rounds=1", f"--out={out}"], cwd=REPO, capture_output=True, text=True,
        timeout=600, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["num_images"] == 8
    for part in ("whole_evaluate", "input_only", "model_only", "originals_only", "bookkeeping",
                 "coco_scoring"):
        assert record[part] > 0 and record["images_per_s"][part] > 0, part
    ab = record["ab"]
    assert len(ab["ahead"]) == len(ab["sequential"]) == 1 and ab["ahead_median_s"] > 0
    assert ab["ahead"][0]["AP"] == ab["sequential"][0]["AP"]
    after = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
             for d, _, files in os.walk(workdir) for f in files}
    assert after == before
    bad = subprocess.run([sys.executable, "experiments/bench/evaluation_parts.py",
                          f"--workdir={tmp_path / 'nothing'}"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "not a training workdir" in bad.stderr
