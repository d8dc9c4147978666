r"""Pretrains the small shapes-world T5 encoder on text alone and exports it.

  python scripts/pretrain_text_encoder.py --out /tmp/shapes-t5 [--steps 800 --seed 0]

Writes a Hugging Face T5EncoderModel directory (config.json, model.safetensors,
spiece.model, pretrain_metrics.json) that `load_text_encoder(DIR)` and
transformers' `T5EncoderModel.from_pretrained(DIR)` both read; a complete
directory is reused, not retrained. Prints the metrics. Details:
imagen_jax/encoder_pretrain.py.
"""

import json

from absl import app
from absl import flags

from imagen_jax import encoder_pretrain as pretrain

_DEFAULTS = pretrain.PretrainConfig()
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Texts per step.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of corpus, vocabulary, init, masks.")
_SPLIT = flags.DEFINE_enum("split", _DEFAULTS.split, ["train", "heldout", "all"], "Corpus split.")
_OBJECTS = flags.DEFINE_integer("max_objects", _DEFAULTS.max_objects, "Objects per scene.")


def main(argv):
  del argv
  config = pretrain.PretrainConfig(
      steps=_STEPS.value,
      batch_size=_BATCH.value,
      seed=_SEED.value,
      split=_SPLIT.value,
      max_objects=_OBJECTS.value,
  )
  metrics = pretrain.pretrain_encoder(_OUT.value, config)
  print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
