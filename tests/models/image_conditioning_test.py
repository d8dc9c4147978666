"""GLIDE's inpainting input and unCLIP's image-embedding input of the base U-Net
(models/image_conditioning.py), and the inpainting stage's random training masks
(diffusion/train_masks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax.models import image_conditioning

R, L, D = 16, 5, 64


def _net(**overrides):
  return models.get_model("shapes_base16", "tiny", text_dim=D, **overrides)


def _inputs(b=2, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (
      jax.random.normal(k[0], (b, R, R, 3)),
      jnp.zeros((b,)),
      jax.random.normal(k[1], (b, L, D)),
      jnp.ones((b, L), bool),
  )


def test_inpaint_condition_zeroes_the_hole_and_appends_the_mask():
  image = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
  mask = np.zeros((2, 4, 4), bool)
  mask[:, :2] = True
  out = np.asarray(image_conditioning.inpaint_condition(image, mask))
  assert out.shape == (2, 4, 4, 4)
  np.testing.assert_array_equal(out[:, :2, :, :3], np.asarray(image)[:, :2])
  np.testing.assert_array_equal(out[:, 2:, :, :3], 0.0)
  np.testing.assert_array_equal(out[..., 3], mask.astype(np.float32))
  # A [B, H, W, 3] mask (as diffusion.sample broadcasts it) reads its first channel.
  wide = np.repeat(mask[..., None], 3, axis=-1)
  np.testing.assert_array_equal(image_conditioning.inpaint_condition(image, wide), out)


def test_inpainting_unet_reads_its_extra_channels_and_checks_them():
  net = _net(image_cond_channels=4)
  x, t, emb, mask = _inputs()
  cond = jnp.zeros((2, R, R, 4))
  params = net.init(jax.random.PRNGKey(1), x, t, emb, mask, image_cond=cond)
  assert params["params"]["in_conv"]["kernel"].value.shape[2] == 3 + 4
  a = net.apply(params, x, t, emb, mask, image_cond=cond)
  b = net.apply(params, x, t, emb, mask, image_cond=cond.at[:, :, :, 3].set(1.0))
  assert a.shape == x.shape and float(jnp.abs(a - b).mean()) > 1e-4
  with pytest.raises(ValueError, match=r"image_cond_channels=4.*got none"):
    net.apply(params, x, t, emb, mask)
  with pytest.raises(
      ValueError, match=r"image_cond shape: expected \(2, 16, 16, 4\), got \(2, 8, 8, 4\)"
  ):
    net.apply(params, x, t, emb, mask, image_cond=jnp.zeros((2, 8, 8, 4)))
  plain = _net()
  with pytest.raises(ValueError, match="image_cond_channels=0 but got an image_cond"):
    plain.init(jax.random.PRNGKey(1), x, t, emb, mask, image_cond=cond)


def test_decoder_unet_reads_the_embedding_and_checks_its_width():
  net = _net(image_embed_dim=32)
  x, t, emb, mask = _inputs()
  z = jax.random.normal(jax.random.PRNGKey(3), (2, 32))
  params = net.init(jax.random.PRNGKey(1), x, t, emb, mask, image_embed=z)
  a = net.apply(params, x, t, emb, mask, image_embed=z)
  b = net.apply(params, x, t, emb, mask, image_embed=jnp.zeros_like(z))
  assert float(jnp.abs(a - b).mean()) > 1e-4  # the embedding reaches the output
  # Per example: changing example 1's embedding leaves example 0's prediction alone.
  c = net.apply(params, x, t, emb, mask, image_embed=z.at[1].set(0.0))
  np.testing.assert_allclose(c[0], a[0], atol=1e-5)
  with pytest.raises(ValueError, match=r"image_embed shape: expected \(2, 32\).*got \(2, 48\)"):
    net.apply(params, x, t, emb, mask, image_embed=jnp.zeros((2, 48)))
  with pytest.raises(ValueError, match=r"image_embed_dim=32\) and got none"):
    net.apply(params, x, t, emb, mask)


def test_random_box_masks_are_boxes_of_the_asked_size():
  r, n = 16, 512
  known = np.asarray(
      diffusion.random_box_masks(
          jax.random.PRNGKey(0), n, r, min_frac=0.25, max_frac=0.75, p_nothing_known=0.2
      )
  )[..., 0]
  assert known.shape == (n, r, r) and known.dtype == bool
  nothing = ~known.any(axis=(1, 2))
  assert 0.12 < nothing.mean() < 0.28  # p_nothing_known = 0.2
  for m in known[~nothing][:64]:
    hole = np.argwhere(~m)
    (y0, x0), (y1, x1) = hole.min(0), hole.max(0) + 1
    assert (~m[y0:y1, x0:x1]).all()  # one axis-aligned box
    assert hole.shape[0] == (y1 - y0) * (x1 - x0)
    assert 4 <= y1 - y0 <= 12 and 4 <= x1 - x0 <= 12  # 0.25 and 0.75 of 16
  holes = ~known[~nothing]
  assert holes[:, 0, :].any() and holes[:, -1, :].any() and holes[:, :, 0].any()  # reach edges
  with pytest.raises(ValueError, match=r"fractions \(0.8, 0.5\)"):
    diffusion.random_box_masks(jax.random.PRNGKey(0), 2, r, min_frac=0.8, max_frac=0.5)
  with pytest.raises(ValueError, match="p_nothing_known=1.5"):
    diffusion.random_box_masks(jax.random.PRNGKey(0), 2, r, p_nothing_known=1.5)
