"""The networks on their `tiny` variants: shapes, conditioning, precision, remat."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import get_model

# Small graphs: compile time dominates, so compile with few optimisations.
pytestmark = pytest.mark.usefixtures("fast_compile")

BATCH, TEXT_LEN = 2, 6
MODELS = ["imagen_base64", "imagen_sr256", "shapes_base32", "shapes_sr64"]


@pytest.fixture(scope="module")
def fast_compile():
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def make_inputs(model, seed=0):
  """Random call arguments; row 0 has 4 real tokens, row 1 is null text."""
  rs = np.random.RandomState(seed)
  r = model.resolution
  args = dict(
      x_t=rs.randn(BATCH, r, r, 3).astype(np.float32),
      log_snr=np.array([-3.0, 5.0], np.float32),
      text_emb=rs.randn(BATCH, TEXT_LEN, model.text_dim).astype(np.float32),
      text_mask=np.arange(TEXT_LEN)[None] < np.array([[4], [0]]),
  )
  if model.lowres_resolution is not None:
    lr = model.lowres_resolution
    args["lowres"] = rs.randn(BATCH, lr, lr, 3).astype(np.float32)
    args["lowres_log_snr"] = np.array([2.0, -1.0], np.float32)
  return args


def _call(model, variables, args):
  args = dict(args)
  return model.apply(
      variables,
      args.pop("x_t"),
      args.pop("log_snr"),
      args.pop("text_emb"),
      args.pop("text_mask"),
      **args,
  )


@functools.lru_cache(maxsize=None)
def setup(name, **overrides):
  """(model, variables, jitted forward(variables, args)) per model, cached."""
  model = get_model(name, "tiny", **overrides)
  args = make_inputs(model)
  variables = jax.jit(
      lambda a: model.init(
          jax.random.key(0),
          a.pop("x_t"),
          a.pop("log_snr"),
          a.pop("text_emb"),
          a.pop("text_mask"),
          **a,
      )
  )(dict(args))
  forward = jax.jit(functools.partial(_call, model))
  return model, variables, forward


def _out(name, args=None, **overrides):
  model, variables, forward = setup(name, **overrides)
  return np.asarray(forward(variables, args or make_inputs(model)))


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_dtype_and_finite(name):
  model, _, _ = setup(name)
  out = _out(name)
  assert out.shape == (BATCH, model.resolution, model.resolution, 3)
  assert out.dtype == np.float32
  assert np.isfinite(out).all()
  assert out.std() > 1e-3


def test_sr_network_runs_on_crops_with_full_size_params():
  # Imagen's 256->1024 stage trains on crops of the target and samples at full size.
  model, variables, forward = setup("imagen_sr256")
  rs = np.random.RandomState(1)
  args = make_inputs(model)
  args["x_t"] = rs.randn(BATCH, 64, 48, 3).astype(np.float32)
  args["lowres"] = rs.randn(BATCH, 16, 12, 3).astype(np.float32)
  out = np.asarray(forward(variables, args))
  assert out.shape == (BATCH, 64, 48, 3) and np.isfinite(out).all()
  assert out.std() > 1e-3


@pytest.mark.parametrize("name", ["imagen_base64", "imagen_sr256"])
def test_padding_tokens_do_not_change_output(name):
  model, _, _ = setup(name)
  args = make_inputs(model)
  base = _out(name, args)
  perturbed = dict(args)
  emb = args["text_emb"].copy()
  pad = ~args["text_mask"]
  emb[pad] = 1e3 * np.random.RandomState(5).randn(pad.sum(), model.text_dim)
  perturbed["text_emb"] = emb
  np.testing.assert_allclose(_out(name, perturbed), base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["imagen_base64", "imagen_sr256"])
def test_output_depends_on_text_and_noise_level(name):
  model, _, _ = setup(name)
  args = make_inputs(model)
  base = _out(name, args)

  def changed(**kv):
    return np.abs(_out(name, {**args, **kv}) - base).max(axis=(1, 2, 3))

  # (A constant offset would be invisible: the tokens are LayerNorm-ed.)
  other_text = np.random.RandomState(3).randn(*args["text_emb"].shape)
  other_text = other_text.astype(np.float32)
  diff = changed(text_emb=other_text)
  assert diff[0] > 1e-3  # real tokens changed -> output changes
  assert diff[1] == 0.0  # null-text row: no valid tokens to change
  # Turning the null row into real text changes it.
  assert changed(text_mask=np.ones_like(args["text_mask"]))[1] > 1e-3
  assert (changed(log_snr=args["log_snr"] + 0.5) > 1e-3).all()
  if model.lowres_resolution is not None:
    assert (changed(lowres=args["lowres"] * 0.5) > 1e-3).all()
    assert (changed(lowres_log_snr=args["lowres_log_snr"] + 0.5) > 1e-3).all()


@pytest.mark.parametrize("name", ["imagen_base64", "imagen_sr256"])
def test_bf16_compute_close_to_float32(name):
  model, variables, _ = setup(name)
  args = make_inputs(model)
  ref = _out(name, args)
  bf16 = get_model(name, "tiny", dtype=jnp.bfloat16)
  out = jax.jit(functools.partial(_call, bf16))(variables, args)
  assert out.dtype == jnp.float32
  out = np.asarray(out)
  assert np.isfinite(out).all()
  rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
  assert rel < 0.05, rel
  # Parameters stay float32 whatever the compute dtype.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


@pytest.mark.parametrize("name", ["imagen_base64", "shapes_sr64"])
def test_remat_gives_same_loss_and_grads(name):
  model, variables, _ = setup(name)
  args = make_inputs(model, seed=1)
  target = np.random.RandomState(7).randn(*args["x_t"].shape)

  def loss_and_grads(remat):
    net = get_model(name, "tiny", remat=remat, dropout=0.1)
    rng = jax.random.key(11)

    def loss_fn(params):
      a = dict(args)
      out = net.apply(
          {"params": params},
          a.pop("x_t"),
          a.pop("log_snr"),
          a.pop("text_emb"),
          a.pop("text_mask"),
          train=True,
          rngs={"dropout": rng},
          **a,
      )
      return jnp.mean((out - target) ** 2)

    return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])

  loss0, grads0 = loss_and_grads("none")
  for remat in ("block", "full"):
    loss, grads = loss_and_grads(remat)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, grads0)


def _abstract_init(model, args):
  args = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in args.items()}
  return jax.eval_shape(
      lambda a: model.init(
          jax.random.key(0),
          a.pop("x_t"),
          a.pop("log_snr"),
          a.pop("text_emb"),
          a.pop("text_mask"),
          **a,
      ),
      args,
  )


@pytest.mark.parametrize(
    "name,change,pattern",
    [
        ("imagen_base64", dict(x_t=(2, 32, 32, 3)), r"x_t image size: expected 64x64, got 32x32"),
        (
            "imagen_sr256",
            dict(x_t=(2, 120, 120, 3)),
            r"x_t image size: expected 256x256 or a crop with sides divisible by 16, got 120x120",
        ),
        (
            "imagen_sr256",
            dict(x_t=(2, 128, 128, 3)),  # a crop needs the matching low-res crop
            r"lowres shape: expected \(2, 32, 32, 3\), got \(2, 64, 64, 3\)",
        ),
        ("imagen_base64", dict(x_t=(2, 64, 64, 4)), r"x_t channels: expected 3, got 4"),
        (
            "imagen_base64",
            dict(text_emb=(2, 6, 48)),
            r"text_emb dim \(text_dim\): expected 32, got 48",
        ),
        (
            "imagen_sr256",
            dict(text_emb=(2, 6, 48)),
            r"text_emb dim \(text_dim\): expected 32, got 48",
        ),
        (
            "imagen_base64",
            dict(text_mask=(2, 5)),
            r"text_mask shape: expected \(2, 6\), got \(2, 5\)",
        ),
        (
            "imagen_sr256",
            dict(lowres=(2, 32, 32, 3)),
            r"lowres shape: expected \(2, 64, 64, 3\), got \(2, 32, 32, 3\)",
        ),
        ("imagen_sr256", dict(lowres=None), r"lowres and lowres_log_snr are " "required"),
        ("imagen_base64", dict(lowres=(2, 16, 16, 3)), r"base stage"),
        ("imagen_base64", dict(log_snr=(2, 1)), r"log_snr shape: expected \(2,\), got \(2, 1\)"),
    ],
)
def test_bad_inputs_raise_at_trace_time(name, change, pattern):
  model = get_model(name, "tiny")
  args = make_inputs(model)
  for key, shape in change.items():
    if shape is None:
      args.pop(key)
    else:
      dtype = bool if key == "text_mask" else np.float32
      args[key] = np.zeros(shape, dtype)
  with pytest.raises(ValueError, match=pattern):
    _abstract_init(model, args)
