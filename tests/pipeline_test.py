"""StagePipeline on the registry's tiny shapes stages: loss, caption dropout,
denoise_fn, batched classifier-free guidance and sampling.

The reference computations call the network directly (`model.apply`) with the
null text built here (zero embedding, all-False mask), never through the
pipeline's own helpers.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from imagen_jax import diffusion
from imagen_jax import pipeline as pipeline_lib
from imagen_jax.models import registry

B, L = 3, 5  # batch, text length


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
  """XLA without most optimisations for this module (as the Flax examples'
  train_test): compiling is most of its time, and none of it is about XLA."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def _random_params(pipe, seed):
  """Random weights of the network's own shapes (from `jax.eval_shape` of
  `pipe.init`, so no init is compiled): kernels ~ N(0, 1/fan_in), norm scales
  near 1, and non-zero biases and null tokens, so that no zero-initialised
  layer hides the text (or low-res) input from the prediction."""
  shapes = meta.unbox(jax.eval_shape(pipe.init, jax.random.PRNGKey(0))["params"])
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    noise = rng.standard_normal(x.shape).astype(np.float32)
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(noise / np.sqrt(math.prod(x.shape[:-1])))
    if name == "scale":
      return jnp.asarray(1.0 + 0.1 * noise)
    return jnp.asarray(0.1 * noise)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _stage(name, prediction, **overrides):
  # The tiny variant with fewer residual blocks: these tests compile a handful
  # of forward passes on two CPU cores.
  model = registry.get_model(name, "tiny", text_dim=16, **overrides)
  pipe = pipeline_lib.StagePipeline(
      model=model,
      schedule=diffusion.get_schedule("cosine"),
      prediction=prediction,
      aug_schedule=diffusion.get_schedule("linear"),
  )
  return pipe, _random_params(pipe, seed=1)


@pytest.fixture(scope="module")
def base():
  return _stage("shapes_base16", "eps", num_res_blocks=1)


@pytest.fixture(scope="module")
def sr():
  return _stage("shapes_sr32", "v", num_res_blocks=(1, 1, 1))


def _inputs(pipe, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  r = pipe.resolution
  out = dict(
      image=jax.random.uniform(ks[0], (B, r, r, 3), minval=-1.0, maxval=1.0),
      text_emb=jax.random.normal(ks[1], (B, L, pipe.model.text_dim)),
      text_mask=jnp.arange(L)[None, :] < jnp.array([5, 3, 1])[:, None],
      x_t=jax.random.normal(ks[2], (B, r, r, 3)),
      t=jnp.array([0.2, 0.5, 0.9]),
  )
  if pipe.is_super_resolution:
    lr = pipe.lowres_resolution
    out["lowres"] = jax.random.uniform(ks[3], (B, lr, lr, 3), minval=-1.0, maxval=1.0)
    out["aug_t"] = jnp.array([0.0, 0.3, 0.6])
  return out


def _network(pipe, params, emb, mask, inp):
  """The network's prediction at inp's x_t, t, called directly (the reference)."""
  kw = {}
  if pipe.is_super_resolution:
    kw = dict(lowres=inp["lowres"], lowres_log_snr=pipe.aug_schedule.log_snr(inp["aug_t"]))
  return pipe.model.apply(
      {"params": params}, inp["x_t"], pipe.schedule.log_snr(inp["t"]), emb, mask, train=False, **kw
  )


def _null(emb, mask):
  return jnp.zeros_like(emb), jnp.zeros_like(mask)


def _batch(inp, drop=(False,) * B):
  """A training batch; always with `drop_text` (one pytree structure, so one
  compilation of the loss)."""
  out = {k: inp[k] for k in ("image", "text_emb", "text_mask", "lowres") if k in inp}
  return {**out, "drop_text": jnp.array(drop)}


def _close(got, want, tol=1e-5):
  """Equal to `tol` relative to the largest |value| (float32 sums in another
  order, e.g. over a doubled batch, differ in the last bits)."""
  np.testing.assert_allclose(
      np.asarray(got), np.asarray(want), rtol=0, atol=tol * float(np.abs(want).max())
  )


@pytest.fixture(scope="module")
def reference(request):
  """Per stage: its inputs and the conditional and unconditional predictions
  from two separate direct network calls."""
  cache = {}

  def get(stage):
    if stage not in cache:
      pipe, params = request.getfixturevalue(stage)
      inp = _inputs(pipe, seed=5)
      net = jax.jit(lambda p, emb, mask: _network(pipe, p, emb, mask, inp))
      emb, mask = inp["text_emb"], inp["text_mask"]
      cache[stage] = inp, net(params, emb, mask), net(params, *_null(emb, mask))
    return cache[stage]

  return get


@pytest.fixture(scope="module")
def base_loss(base):
  pipe, _ = base
  return jax.jit(pipe.loss_fn)


def test_loss_is_a_finite_scalar_with_metrics(base, base_loss):
  pipe, params = base
  loss, metrics = base_loss(params, _batch(_inputs(pipe)), jax.random.PRNGKey(3))
  assert loss.shape == () and np.isfinite(float(loss))
  assert set(metrics) == {"loss", "mse"}
  assert float(metrics["loss"]) == float(loss)
  assert float(metrics["mse"]) > 0


def test_caption_dropout_gives_dropped_rows_the_null_text(base, base_loss):
  pipe, params = base
  inp = _inputs(pipe)
  rng = jax.random.PRNGKey(4)
  loss = lambda batch: float(base_loss(params, batch, rng)[0])
  emb, mask = inp["text_emb"], inp["text_mask"]
  null_emb, null_mask = _null(emb, mask)

  all_dropped = loss(_batch(inp, drop=(True,) * B))
  explicit_null = loss({**_batch(inp), "text_emb": null_emb, "text_mask": null_mask})
  np.testing.assert_allclose(all_dropped, explicit_null, rtol=1e-6)

  drop = jnp.array([True, False, True])
  some_dropped = loss(_batch(inp, drop=drop))
  rows_nulled = loss(
      {
          **_batch(inp),
          "text_emb": jnp.where(drop[:, None, None], 0.0, emb),
          "text_mask": jnp.where(drop[:, None], False, mask),
      }
  )
  np.testing.assert_allclose(some_dropped, rows_nulled, rtol=1e-6)

  none_dropped = loss(_batch(inp))
  assert abs(all_dropped - none_dropped) > 1e-4  # the text reaches the loss
  assert abs(some_dropped - none_dropped) > 1e-4


def test_unguided_denoise_fn_is_the_conditional_network(base, reference):
  pipe, params = base
  inp, cond, _ = reference("base")
  emb, mask = inp["text_emb"], inp["text_mask"]
  assert not pipeline_lib.is_guided(1.0)
  got = jax.jit(lambda p: pipe.denoise_fn(p, emb, mask, 1.0)(inp["x_t"], inp["t"]))(params)
  _close(got, cond)


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_batched_cfg_equals_two_separate_passes(stage, request, reference):
  pipe, params = request.getfixturevalue(stage)
  inp, cond, uncond = reference(stage)
  assert float(jnp.abs(cond - uncond).max()) > 1e-2 * float(
      jnp.abs(cond).max()
  )  # the text matters, so the test can fail
  emb, mask = inp["text_emb"], inp["text_mask"]
  extra = {k: inp[k] for k in ("lowres", "aug_t") if k in inp}

  @jax.jit
  def guided(p, scale):  # a traced scale: the batched path, one compilation
    return pipe.denoise_fn(p, emb, mask, scale, **extra)(inp["x_t"], inp["t"])

  for scale in (0.0, 1.0, 3.0, 7.5):
    _close(guided(params, jnp.float32(scale)), diffusion.cfg(cond, uncond, scale))


def test_sampling_shape_range_and_determinism(base):
  pipe, params = base
  inp = _inputs(pipe)

  @jax.jit
  def sample(p, rng, scale):
    return pipe.sample(
        p,
        inp["text_emb"],
        inp["text_mask"],
        rng,
        sampler="ddim",
        num_steps=2,
        guidance_scale=scale,
        threshold="dynamic",
    )

  a = sample(params, jax.random.PRNGKey(0), 3.0)
  assert a.shape == (B, pipe.resolution, pipe.resolution, 3)
  assert np.all(np.isfinite(a)) and float(jnp.abs(a).max()) <= 1.0 + 1e-6
  np.testing.assert_array_equal(a, sample(params, jax.random.PRNGKey(0), 3.0))
  assert not np.allclose(a, sample(params, jax.random.PRNGKey(1), 3.0))
  assert not np.allclose(a, sample(params, jax.random.PRNGKey(0), 1.0))


def test_sr_sampling_needs_and_uses_the_lowres_input(sr):
  pipe, params = sr
  inp = _inputs(pipe)
  emb, mask = inp["text_emb"], inp["text_mask"]
  with pytest.raises(ValueError, match="low-res input"):
    pipe.sample(params, emb, mask, jax.random.PRNGKey(0))

  @jax.jit
  def sample(p, lowres):
    return pipe.sample(
        p,
        emb,
        mask,
        jax.random.PRNGKey(0),
        sampler="ddpm",
        num_steps=2,
        lowres=lowres,
        aug_level=0.1,
    )

  a = sample(params, inp["lowres"])
  assert a.shape == (B, pipe.resolution, pipe.resolution, 3)
  assert np.all(np.isfinite(a))
  assert not np.allclose(a, sample(params, -inp["lowres"]))
