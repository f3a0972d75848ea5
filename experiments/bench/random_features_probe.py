r"""Linear probe of an untrained backbone: the "random features" row of the SimCLR bench.

  python experiments/bench/random_features_probe.py \
      --config=experiments/configs/pretrain_simclr.py --out=/tmp/random_probe.json

Builds `config.model.backbone` with freshly initialised weights (seeded by `config.seed`) and
runs the same linear probe as `python -m rethink_tf.pretrain --probe_only`
(`pretraining.linear_probe`: softmax regression on frozen, pooled features of
`dataset.train_split`, top-1 on `dataset.eval_split`), so a SimCLR probe has a baseline
measured by the same protocol on the same data. Every `--config.*` override works.
"""
import json
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config with the probe's data.")
_OUT = flags.DEFINE_string("out", None, "Where to write the probe's metrics (JSON).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    import keras  # pylint: disable=g-import-not-at-top
    from rethink_tf.models import backbones  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import pretraining  # pylint: disable=g-import-not-at-top
    config = _CONFIG.value
    keras.utils.set_random_seed(int(config.seed))
    size = int(config.dataset.image_size)
    start = time.time()
    backbone = backbones.build_backbone(config.model.backbone, input_shape=(size, size, 3))
    metrics = pretraining.linear_probe(backbone, config)
    metrics.update(seconds=round(time.time() - start, 1), backbone=config.model.backbone,
                   dataset=config.dataset.name, weights="random")
    print(json.dumps(metrics), flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    app.run(main)
