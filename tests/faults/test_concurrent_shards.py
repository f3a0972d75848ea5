"""Two machines pseudo-labelling one directory at the same time (`--num_shards=2
--shard_index=0|1`, two processes started together): the union equals one machine's run
byte for byte, with no image missing or twice, and the manifest counts every shard."""

import os
import subprocess
import sys

from faults_helpers import UNLABELED  # tests/faults/  # pylint: disable=g-bad-import-order
from faults_helpers import procs  # pylint: disable=g-bad-import-order
from faults_helpers import run_command  # pylint: disable=g-bad-import-order

from rethink_tf.pseudo import records


def _command(teacher, output, data_dir, *extra):
    return ["-m", "rethink_tf.pseudo_label", f"--teacher={teacher}", f"--unlabeled={UNLABELED}",
            "--split=unlabeled[:24]", f"--data_dir={data_dir}", f"--output={output}",
            "--num_output_shards=6", "--batch_size=4", "--score_threshold=0.0", *extra]


def _shards(directory):
    out = {}
    for path in records.list_shards(str(directory)).values():
        with open(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    return out


def test_two_machines_at_once_write_what_one_machine_writes(tmp_path, trained_workdir,
                                                            digit_scenes_data_dir):
    one = tmp_path / "one"
    run_command(_command(trained_workdir, one, digit_scenes_data_dir))
    two = tmp_path / "two"
    machines = [subprocess.Popen(
        [sys.executable, *_command(trained_workdir, two, digit_scenes_data_dir,
                                   "--num_shards=2", f"--shard_index={i}")],
        cwd=procs.REPO_ROOT, env=procs.env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    for machine, output in zip(machines, outputs):
        assert machine.returncode == 0, output[-3000:]
    assert _shards(two) == _shards(one) and len(_shards(one)) == 6
    manifest = records.read_manifest(str(two))
    assert manifest["complete"] and manifest["num_images"] == 24
    ids = [e["source_id"] for e in records.load_pseudo_labels(str(two)).as_numpy_iterator()]
    assert len(ids) == len(set(ids)) == 24
    assert not [n for n in os.listdir(two) if ".tmp-" in n]
