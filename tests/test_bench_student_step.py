"""experiments/bench/student_step.py at a tiny size: the joint step against the supervised one."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_joint_step_benchmark_reports_time_per_image_of_both_sides(tmp_path,
                                                                   digit_scenes_data_dir):
    out = tmp_path / "joint_step.json"
    command = [sys.executable, "experiments/bench/student_step.py", "--kind=joint",
               "--dataset=digit_scenes/detection_tiny", f"--data_dir={digit_scenes_data_dir}",
               "--joint_dataset=digit_scenes/classification_tiny", "--backbone=resnet_tiny",
               "--image_size=64", "--batch_size=2", "--steps=2", "--chunk=1", "--repeats=2",
               "--warmup=1", f"--out={out}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["ms_per_image"]) == {"supervised", "joint"}
    assert len(record["ratio_joint_over_supervised"]) == 2
    assert all(v > 0 for side in record["ms_per_image"].values() for v in side)
    assert record["images_per_step"] == 4  # 2 human + 2 pseudo
    assert "joint / supervised time per image" in result.stdout
