r"""What `config.deterministic` costs: training step time with TF op determinism on and off.

  python experiments/bench/determinism.py [--steps=60] [--repeats=2] [--data_dir=DIR]

Trains the detection and segmentation configs (resnet_small, 128 px, batch 8) on the tiny
`digit_scenes` configs (built into --data_dir if missing) for --steps steps, alternately with
determinism off and on, and reports the median time per step after the first 10 (tracing).
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags

_STEPS = flags.DEFINE_integer("steps", 60, "Training steps per run.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs per setting (alternating).")
_DATA_DIR = flags.DEFINE_string("data_dir", os.path.join(tempfile.gettempdir(),
                                                         "rethink_tf_bench_tfds"),
                                "TFDS data dir for the tiny digit_scenes configs.")


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import digit_scenes  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top

    tfds.builder("digit_scenes", config=digit_scenes.tiny_config("detection"),
                 data_dir=_DATA_DIR.value).download_and_prepare()

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    results = {}
    for task in ("detection", "segmentation"):
        for repeat in range(_REPEATS.value):
            for deterministic in (False, True):
                c = config_lib.base_config(task)
                c.dataset.name = "digit_scenes/detection_tiny"
                c.dataset.data_dir = _DATA_DIR.value
                c.dataset.image_size = 128
                c.train.steps = _STEPS.value
                c.train.batch_size = 8
                c.train.checkpoint_every = _STEPS.value
                c.train.eval_every = 0
                c.train.verbose = 0
                c.eval.num_images = 8
                c.deterministic = deterministic
                timer = StepTimes()
                with tempfile.TemporaryDirectory() as workdir:
                    trainer.train(c, workdir, extra_callbacks=[timer])
                step = statistics.median(timer.times[10:])
                results.setdefault((task, deterministic), []).append(step)
                print(f"{task} deterministic={deterministic} run {repeat}: "
                      f"{1000 * step:.1f} ms/step", flush=True)
    print("\n| task | off (ms/step) | on (ms/step) | on / off |\n|---|---|---|---|")
    for task in ("detection", "segmentation"):
        off = statistics.median(results[(task, False)])
        on = statistics.median(results[(task, True)])
        print(f"| {task} | {1000 * off:.1f} | {1000 * on:.1f} | {on / off:.2f}x |")


if __name__ == "__main__":
    app.run(main)
