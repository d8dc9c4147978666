r"""Converts pytorch-fid's Inception weights (.pth) to an .npz that needs no torch to read.

  python scripts/convert_inception_weights.py \
      --input ~/Downloads/pt_inception-2015-12-05-6726825d.pth \
      --output ~/.cache/imagen_jax/pt_inception-2015-12-05-6726825d.npz

The .pth is read with `torch.load(..., weights_only=True)` (no pickled code runs). The
.npz keeps pytorch-fid's key names; the file is checked by mapping it onto the Flax
network before it is written. Get the .pth (on a machine with network access) from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
"""

import os

from absl import app
from absl import flags
import numpy as np

from imagen_jax.evaluation import inception

_INPUT = flags.DEFINE_string("input", None, "pytorch-fid .pth state dict.", required=True)
_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Output .npz path (default: the default weights location, ~/.cache/imagen_jax/).",
)


def convert(src: str, dst: str) -> str:
  if not src.endswith(".pth"):
    raise ValueError(f"--input must be a .pth file, got {src}")
  sd = inception.read_state_dict(src)
  params = inception.params_from_state_dict(sd)  # validates keys and shapes
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  tmp = dst + ".tmp.npz"
  np.savez(tmp, **sd)
  os.replace(tmp, dst)
  return inception.params_identity(params)


def main(argv):
  del argv
  dst = os.path.expanduser(_OUTPUT.value or inception.default_weights_paths()[0])
  ident = convert(os.path.expanduser(_INPUT.value), dst)
  print(f"wrote {dst} (params hash {ident})")


if __name__ == "__main__":
  app.run(main)
