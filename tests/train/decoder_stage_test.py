"""unCLIP's decoder stage (configs/shapes.py:stage=decoder): trained by the one trainer on
the frozen CLIP's image embeddings of its images, then decoding given embeddings through
the cascade (the prior's, or an image's own for variations); and its errors."""

import math

import numpy as np
import pytest

from configs import shapes as shapes_config
from imagen_jax import clip as clip_lib
from imagen_jax import sampling
from imagen_jax.data import shapes
from imagen_jax.train import loop

PROMPTS = ["a large red circle on the left", "a small blue square"]
FAST = sampling.StageSettings(sampler="ddim", num_steps=3, guidance_scale=3.0)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("clip")
  loop.train_and_evaluate(shapes_config.get_config("stage=clip,runlocal"), str(workdir))
  return str(workdir)


def _decoder_config(clip_dir):
  c = shapes_config.get_config("stage=decoder,runlocal")
  c.decoder.clip = clip_dir
  return c


@pytest.mark.slow  # trains a runlocal CLIP and the decoder, then samples: ~2 min on 2 cores
def test_decoder_trains_and_decodes_embeddings_and_images(clip_dir, tmp_path):
  final = loop.train_and_evaluate(_decoder_config(clip_dir), str(tmp_path / "decoder"))
  assert int(final.step) == 3
  stage = sampling.load_stage(str(tmp_path / "decoder"))
  assert stage.pipeline.image_embed_dim == 64
  cascade = sampling.CascadeSampler([stage], [FAST], batch_size=2)
  # Variations: the embeddings of given images, at the scale the decoder trained on.
  clip = clip_lib.load_clip(clip_dir)
  renders = np.stack([shapes.render(shapes.sample_scene(i, "train"), 16) for i in range(2)])
  z = np.asarray(clip.encode_images(renders)) * math.sqrt(64)
  out = cascade.sample(PROMPTS, seed=0, progress=False, image_embed=z)[0]
  assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
  other = cascade.sample(PROMPTS, seed=0, progress=False, image_embed=-z)[0]
  assert np.abs(out.astype(int) - other.astype(int)).mean() > 0.1  # it reads the embedding
  with pytest.raises(ValueError, match=r"is an unCLIP decoder: pass image_embed \[2, 64\]"):
    cascade.sample(PROMPTS, progress=False)
  with pytest.raises(ValueError, match=r"image_embed of shape \[2, 32\].*decodes \[2, 64\]"):
    cascade.sample(PROMPTS, progress=False, image_embed=np.zeros((2, 32)))


def test_decoder_needs_its_clip(tmp_path):
  c = shapes_config.get_config("stage=decoder,runlocal")
  with pytest.raises(ValueError, match=r"config\.decoder\.clip is required"):
    loop.train_and_evaluate(c, str(tmp_path / "a"))


@pytest.mark.slow  # the runlocal CLIP run
def test_decoder_needs_the_clip_width(clip_dir, tmp_path):
  c = _decoder_config(clip_dir)
  c.model.overrides.image_embed_dim = 32
  with pytest.raises(ValueError, match=r"gives 64-dim image embeddings but the decoder takes "):
    loop.train_and_evaluate(c, str(tmp_path / "b"))


@pytest.mark.slow  # the runlocal CLIP, decoder and prior runs, then two sampling scripts
def test_sample_script_chains_prior_and_decoder_and_makes_variations(clip_dir, tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from PIL import Image  # pylint: disable=import-outside-toplevel

  root = pathlib.Path(__file__).resolve().parents[2]
  loop.train_and_evaluate(_decoder_config(clip_dir), str(tmp_path / "decoder"))
  prior = shapes_config.get_config("stage=prior,runlocal")
  prior.prior.clip = clip_dir
  loop.train_and_evaluate(prior, str(tmp_path / "prior"))
  Image.fromarray(shapes.render(shapes.sample_scene(3, "train"), 16)).save(tmp_path / "v.png")
  base = [sys.executable, str(root / "scripts/sample.py"), f"--workdir_base={tmp_path}/decoder"]
  base += ["--sampler=ddim", "--num_steps=3", "--prompt=a small blue square"]
  runs = {
      "prior": [f"--prior_workdir={tmp_path}/prior", "--prior_num_steps=3"],
      "variation": [f"--variation_of={tmp_path}/v.png"],
  }
  for name, extra in runs.items():
    out = tmp_path / f"out_{name}"
    subprocess.run(
        base + extra + [f"--output_dir={out}"], check=True, cwd=root, capture_output=True, text=True
    )
    record = json.loads((out / "samples.json").read_text())
    assert record["unclip"]["prior_workdir" if name == "prior" else "variation_of"]
  bad = subprocess.run(base + ["--output_dir=/tmp/x"], cwd=root, capture_output=True, text=True)
  assert bad.returncode != 0 and "give a prior (captions -> embeddings) or an image" in bad.stderr
