"""Registry: paper sizes (shapes only, never allocated), overrides, axes."""

import math
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models.classifier import NoisyClassifier
from imagen_jax.models import EfficientUNet
from imagen_jax.models import UNet
from imagen_jax.models import get_model
from imagen_jax.models import model_names
from imagen_jax.models import registry
from imagen_jax.models import variants

ROOT = pathlib.Path(__file__).resolve().parents[2]


def abstract_variables(model, text_len=8):
  r, f32 = model.resolution, jnp.float32
  args = [
      jax.ShapeDtypeStruct((1, r, r, model.in_channels), f32),
      jax.ShapeDtypeStruct((1,), f32),
      jax.ShapeDtypeStruct((1, text_len, model.text_dim), f32),
      jax.ShapeDtypeStruct((1, text_len), jnp.bool_),
  ]
  kwargs = {}
  if model.lowres_resolution is not None:
    lr = model.lowres_resolution
    kwargs = dict(
        lowres=jax.ShapeDtypeStruct((1, lr, lr, 3), f32),
        lowres_log_snr=jax.ShapeDtypeStruct((1,), f32),
    )
  return jax.eval_shape(lambda *a, **k: model.init(jax.random.key(0), *a, **k), *args, **kwargs)


def param_count(variables):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(variables["params"])))


@pytest.mark.parametrize("name", sorted(registry.PAPER_PARAMS))
def test_paper_variants_within_20_percent(name):
  count = param_count(abstract_variables(get_model(name, "paper")))
  target = registry.PAPER_PARAMS[name]
  assert 0.8 * target <= count <= 1.2 * target, (name, count, target)


def test_summary_script_prints_param_count_and_flops():
  out = subprocess.run(
      [
          sys.executable,
          str(ROOT / "scripts" / "summary.py"),
          "--model",
          "imagen_sr256",
          "--variant",
          "paper",
      ],
      capture_output=True,
      text=True,
      check=True,
      cwd=ROOT,
      timeout=300,
  )
  count = int(re.search(r"^params: (\d+)$", out.stdout, re.M).group(1))
  assert count == param_count(abstract_variables(get_model("imagen_sr256", "paper")))
  gflops = float(re.search(r"forward GFLOPs per example: ([\d.]+)", out.stdout).group(1))
  assert 100 < gflops < 5000


def test_every_name_and_variant_builds_with_attributes():
  expected = {
      "imagen_base64": (UNet, 64, None),
      "imagen_sr256": (EfficientUNet, 256, 64),
      "imagen_sr1024": (EfficientUNet, 1024, 256),
      "shapes_base32": (UNet, 32, None),
      "shapes_base16": (UNet, 16, None),
      "shapes_sr32": (EfficientUNet, 32, 16),
      "shapes_sr64": (EfficientUNet, 64, 32),
  }
  others = {"shapes_classifier16", "shapes_clip16", "shapes_prior", "unclip_prior"}
  assert set(model_names()) == set(expected) | others
  for variant in variants("shapes_classifier16"):
    model = get_model("shapes_classifier16", variant)
    assert isinstance(model, NoisyClassifier) and model.resolution == 16
    assert tuple(model.num_classes) == (6, 3, 2, 5)
  for name, (cls, res, lowres) in expected.items():
    assert {"tiny", "small"} <= set(variants(name))
    for variant in variants(name):
      model = get_model(name, variant)
      assert isinstance(model, cls)
      assert model.resolution == res
      assert model.lowres_resolution == lowres
      assert isinstance(model.text_dim, int)


def test_overrides_and_errors():
  model = get_model("shapes_base32", "tiny", text_dim=256, dtype=jnp.bfloat16, remat="block")
  assert model.text_dim == 256
  assert model.dtype == jnp.bfloat16
  assert model.remat == "block"
  assert get_model("shapes_sr64", "tiny", dtype="bfloat16").dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="unknown UNet field"):
    get_model("shapes_base32", "tiny", text_dims=256)
  with pytest.raises(ValueError, match="unknown model"):
    get_model("imagen_base128", "tiny")
  with pytest.raises(ValueError, match="unknown variant"):
    get_model("imagen_base64", "huge")


def test_demo_models_have_no_attention_at_32_and_above():
  base = get_model("shapes_base32", "small")
  assert max(base.attention_resolutions) < 32
  sr = get_model("shapes_sr64", "small")
  res = sr.resolution
  for _, _, stride, self_attn, cross_attn in sr.level_config():
    res //= stride  # DBlock/UBlock work at the strided resolution
    if self_attn or cross_attn:
      assert res < 32


@pytest.mark.parametrize("name", ["imagen_base64", "imagen_sr256"])
def test_params_have_logical_axes(name):
  variables = abstract_variables(get_model(name, "tiny"))
  allowed = {None, "embed", "mlp", "heads", "kv", "conv_in", "conv_out", "norm"}
  boxes = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxes
  for box in boxes:
    assert isinstance(box, nn.LogicallyPartitioned), box
    assert len(box.names) == box.value.ndim
    assert set(box.names) <= allowed
  specs = nn.get_partition_spec(variables)
  assert jax.tree.leaves(specs)
  # Large kernels are shardable (some axis is named).
  for box in boxes:
    if np.prod(box.value.shape) >= 1024:
      assert any(n is not None for n in box.names)


def test_summary_script_reads_a_config_file(tmp_path):
  config = tmp_path / "stage.py"
  config.write_text(
      "import ml_collections\n\n"
      "def get_config(arg=None):\n"
      "  c = ml_collections.ConfigDict()\n"
      "  c.model = dict(name='shapes_sr64', variant=arg,\n"
      "                 overrides=dict(text_dim=96))\n"
      "  c.text = dict(max_length=12)\n"
      "  return c\n"
  )
  out = subprocess.run(
      [sys.executable, str(ROOT / "scripts" / "summary.py"), f"--config={config}:tiny"],
      capture_output=True,
      text=True,
      check=True,
      cwd=ROOT,
      timeout=300,
  )
  assert "text_dim=96 text_len=12" in out.stdout
  count = int(re.search(r"^params: (\d+)$", out.stdout, re.M).group(1))
  assert count == param_count(abstract_variables(get_model("shapes_sr64", "tiny", text_dim=96)))
