"""experiments/bench/train_step.py at a tiny size: both sides train, alternate, and report."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("encode", ["step", pytest.param("pipeline", marks=pytest.mark.slow)])
def test_train_step_benchmark_alternates_both_sides_and_reports_the_ratio(tmp_path, encode):
    out = tmp_path / "train_step.json"
    command = [sys.executable, "experiments/bench/train_step.py", "--data=synthetic",
               "--image_size=64", "--batch_size=2", "--steps=2", "--chunk=1", "--repeats=2",
               "--warmup=1", "--anchor_sizes", "8", "16", "32", f"--encode={encode}",
               f"--out={out}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["args"]["encode"] == encode
    # 2 rounds x 2 sides, the first side swapped in the second round.
    assert [(r["round"], r["side"]) for r in record["rounds"]] == [
        (0, "ours"), (0, "peer"), (1, "peer"), (1, "ours")]
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in record["rounds"])
    ours, peer = (record["summary"][side]["median_images_per_s"] for side in ("ours", "peer"))
    assert record["ratio_ours_over_peer"] == pytest.approx(ours / peer)
    # Same anchors on both sides: (8x8 + 4x4 + 2x2) locations x 9 anchors at 64 px.
    assert record["models"]["ours"]["anchors_per_image"] == 756
    assert record["models"]["peer"]["anchors_per_image"] == 756
    assert "ratio ours/peer" in result.stdout
