"""experiments/bench/accelerator.py at a tiny size: every measure runs and reports images/s."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a benchmark's script (README "Speed"); CI time
def test_accelerator_benchmark_runs_every_measure(tmp_path, digit_scenes_data_dir):
    out = tmp_path / "accelerator.json"
    command = [sys.executable, "experiments/bench/accelerator.py", "--tiny",
               "--backbone=resnet_tiny", "--image_size=64", "--batch_size=2", "--steps=2",
               "--warmup=1", "--modes=fp32,fp32_xla,bogus_free", "--teacher_steps=1",
               "--dataset=digit_scenes/detection_tiny", f"--data_dir={digit_scenes_data_dir}",
               "--pseudo_images=4", "--eval_images=4", "--encode=pipeline", f"--out={out}"]
    bad = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode == 2 and "--modes: unknown ['bogus_free']" in bad.stderr
    command[command.index("--modes=fp32,fp32_xla,bogus_free")] = "--modes=fp32,fp32_xla"
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    best = record["fastest_train_mode"]
    assert best in ("fp32", "fp32_xla")
    results = record["results"]
    for name in ("train_fp32", "train_fp32_xla", f"student_{best}", f"inference_{best}",
                 f"pseudo_{best}", f"evaluate_{best}"):
        assert results[name]["images_per_s"] > 0, name
    assert results[f"pseudo_{best}"]["num_images"] == 4
    assert results[f"pseudo_{best}"]["marginal_images_per_s"] > 0  # 1 then 4 images
    assert results[f"evaluate_{best}"]["loop_images_per_s"] > 0
    assert record["settings"]["encode"] == "pipeline"  # train and student encode in tf.data
    assert results[f"evaluate_{best}"]["num_images"] == 4
    assert record["devices"] and record["tensorflow"]
    assert "train_fp32_xla" in result.stdout  # the printed table
