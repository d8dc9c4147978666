"""imagen_jax.perf.peer_spec: our configs in imagen-pytorch's terms.

The reference for the SR mapping is imagen-pytorch's own `SRUnet256` preset (v2.1.0), which
follows the paper's Efficient U-Net table: dim=128, dim_mults=(1, 2, 4, 8),
num_resnet_blocks=(2, 4, 8, 8), layer_attns=layer_cross_attns=(False, False, False, True),
memory_efficient=True. Its `BaseUnet64` has dim=512, dim_mults=(1, 2, 3, 4),
num_resnet_blocks=3, layer_attns=(False, True, True, True).
"""

import importlib.util
import pathlib

import pytest

from imagen_jax.models import registry
from imagen_jax.perf import peer_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(path, arg):
  spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_base64_paper_matches_the_papers_shape():
  kw = peer_spec.unet_kwargs("imagen_base64", registry.model_config("imagen_base64", "paper"), 128)
  assert kw["dim"] == 512 and kw["dim_mults"] == (1, 2, 3, 4)
  assert kw["num_resnet_blocks"] == 3
  assert kw["layer_attns"] == (False, True, True, True) == kw["layer_cross_attns"]
  # Our heads at 32/16/8: 1024/64, 1536/64, 2048/64 = 16, 24, 32 -> mean 24.
  assert kw["attn_heads"] == 24 and kw["attn_dim_head"] == 64
  assert kw["text_embed_dim"] == 4096 and kw["cond_dim"] == 2048 and kw["max_text_len"] == 128


def test_sr256_paper_matches_imagen_pytorchs_srunet256():
  kw = peer_spec.unet_kwargs("imagen_sr256", registry.model_config("imagen_sr256", "paper"), 128)
  assert kw["dim"] == 128 and kw["dim_mults"] == (1, 2, 4, 8)
  assert kw["num_resnet_blocks"] == (2, 4, 8, 8)
  assert kw["layer_attns"] == (False, False, False, True) == kw["layer_cross_attns"]
  assert kw["memory_efficient"] and kw["lowres_cond"] and kw["attend_at_middle"]
  assert kw["attn_heads"] == 8  # 1024 / 128


def test_sr1024_has_cross_attention_only():
  kw = peer_spec.unet_kwargs("imagen_sr1024", registry.model_config("imagen_sr1024", "paper"), 128)
  assert kw["layer_attns"] == (False,) * 4 and kw["layer_cross_attns"][-1]
  assert not kw["attend_at_middle"]


def test_spec_follows_the_config():
  c = _config("configs/base64.py", "variant=small,data=shapes")
  s = peer_spec.spec(
      c,
      batch_size=64,
      sample_batch_size=16,
      sample_steps=32,
      guidance_scale=5.0,
      repeats=5,
      inner=5,
  )
  assert s["precision"] == "bf16"  # small computes in bfloat16
  assert s["imagen"]["image_sizes"] == [64]
  assert s["imagen"]["pred_objectives"] == "noise" and s["imagen"]["noise_schedules"] == "cosine"
  assert s["imagen"]["cond_drop_prob"] == pytest.approx(0.1)
  assert s["imagen"]["dynamic_thresholding_percentile"] == pytest.approx(0.995)
  assert s["optimizer"]["name"] == "adafactor" and s["optimizer"]["grad_clip_norm"] == 1.0
  assert s["text_len"] == 128 and s["batch_size"] == 64

  sr = _config("configs/shapes.py", "stage=sr1")
  s = peer_spec.spec(
      sr, batch_size=8, sample_batch_size=2, sample_steps=4, guidance_scale=3.0, repeats=1, inner=1
  )
  assert s["imagen"]["image_sizes"] == [16, 32] and s["imagen"]["pred_objectives"] == "v"
  assert s["precision"] == "fp32"


def test_unmatched_settings_are_errors_naming_the_value():
  c = _config("configs/base64.py", "variant=tiny,data=shapes")
  c.unlock()
  c.diffusion.schedule = "sigmoid"
  with pytest.raises(ValueError, match="'sigmoid'"):
    peer_spec.spec(
        c, batch_size=8, sample_batch_size=2, sample_steps=4, guidance_scale=3.0, repeats=1, inner=1
    )
  cfg = registry.model_config("shapes_sr32", "tiny", strides=(2, 2, 1))
  with pytest.raises(ValueError, match=r"strides \(2, 2, 1\)"):
    peer_spec.unet_kwargs("shapes_sr32", cfg, 8)
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    peer_spec.unet_kwargs("nope", {}, 8)
