"""The blurring conditioning augmentation of SR stages (diffusion.blur_lowres)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from imagen_jax import diffusion
from imagen_jax import pipeline as pipeline_lib
from imagen_jax import models


def test_blur_matches_scipy_gaussian_filter_per_image():
  x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
  sigmas = (0.0, 0.7, 1.2)
  out = np.asarray(diffusion.blur_lowres(x, jnp.array(sigmas)))
  np.testing.assert_array_equal(out[0], x[0])  # sigma 0: the image, exactly
  for i in (1, 2):
    s = sigmas[i]
    ref = ndimage.gaussian_filter(
        x[i].astype(np.float64),
        sigma=(s, s, 0),
        mode="nearest",
        truncate=diffusion.cond_aug.BLUR_RADIUS / s,
    )
    np.testing.assert_allclose(out[i], ref, atol=1e-5)


def test_sr_stage_blurs_its_input_in_training_and_sampling():
  model = models.get_model("shapes_sr32", "tiny")
  kw = dict(model=model, schedule=diffusion.get_schedule("cosine"), prediction="v")
  kw["aug_schedule"] = kw["schedule"]
  with np.testing.assert_raises_regex(ValueError, "lowres_blur"):
    pipeline_lib.StagePipeline(**kw, lowres_blur=(1.0, 0.5))
  sharp = pipeline_lib.StagePipeline(**kw, aug_range=(0.0, 0.0))
  blurred = pipeline_lib.StagePipeline(**kw, aug_range=(0.0, 0.0), lowres_blur=(1.0, 1.0))
  rng = jax.random.PRNGKey(0)
  variables = sharp.init(rng, batch_size=2, text_len=4)
  params = variables["params"]
  batch = {
      "image": jax.random.uniform(rng, (2, 32, 32, 3), minval=-1, maxval=1),
      "lowres": jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1, maxval=1),
      "text_emb": jnp.zeros((2, 4, 64)),
      "text_mask": jnp.ones((2, 4), bool),
  }
  pre_blurred = dict(batch, lowres=diffusion.blur_lowres(batch["lowres"], 1.0))
  loss_blur, _ = blurred.loss_fn(params, batch, rng)
  loss_ref, _ = sharp.loss_fn(params, pre_blurred, rng)
  loss_sharp, _ = sharp.loss_fn(params, batch, rng)
  np.testing.assert_allclose(loss_blur, loss_ref, rtol=1e-5)
  assert abs(float(loss_blur) - float(loss_sharp)) > 1e-6
