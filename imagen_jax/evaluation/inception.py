"""The FID InceptionV3 in Flax: 2048-d pool features, weights from pytorch-fid.

The network is the TF-FID graph (`inception-2015-12-05`) as ported by pytorch-fid
(`pytorch_fid/inception.py`): torchvision's InceptionV3 trunk with pytorch-fid's
FID blocks, which differ from torchvision's in two ways:
  * the branch-pool average pools of Mixed_5b..5d, 6b..6e and 7b exclude the zero
    padding from the average (`count_include_pad=False`, TF's behaviour);
  * Mixed_7c's pool branch is a 3x3 *max* pool (stride 1, pad 1), not an average.
Each conv is bias-free, followed by BatchNorm (eps 1e-3, inference statistics) and
ReLU. The output is the global average pool of Mixed_7c: [N, 2048], float32.

Input: float images in [-1, 1], NHWC, any size >= 75 (the network is fully
convolutional up to the global pool). `FeatureExtractor` does the FID protocol
around it: uint8 [N, H, W, 3] -> clean-fid resize to 299 (PIL bicubic on float
channels) -> x / 255 * 2 - 1 (pytorch-fid's normalisation) -> network, in fixed
size batches sharded over the local devices.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (read with
`torch.load(..., weights_only=True)`; torch is imported only then) or the `.npz`
that `scripts/convert_inception_weights.py` writes from it (same key names), at a local
path or a remote one (`gs://...`: copied once into the local cache by
`imagen_jax.storage.paths.local_copy`, since torch.load needs a local file). Nothing is
downloaded from the internet.
"""

import functools
import hashlib
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.storage import paths

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d"
DEFAULT_WEIGHTS_DIR = os.path.join("~", ".cache", "imagen_jax")
FEATURE_DIM = 2048
FID_SIZE = 299
MIN_SIZE = 75
BN_EPS = 1e-3


def default_weights_paths() -> list[str]:
  d = os.path.expanduser(DEFAULT_WEIGHTS_DIR)
  return [os.path.join(d, WEIGHTS_NAME + ext) for ext in (".npz", ".pth")]


class WeightsNotFoundError(FileNotFoundError):
  pass


def _missing_weights_message(path: str | None) -> str:
  where = path or " or ".join(default_weights_paths())
  return (
      f"FID Inception weights not found at {where}. Nothing is downloaded at run time: "
      f"on a machine with network access fetch pytorch-fid's weights from\n  {WEIGHTS_URL}\n"
      f"and put the file at {default_weights_paths()[1]} (or pass its path, e.g. "
      "--inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth). Without torch, "
      "convert it once with `python scripts/convert_inception_weights.py --input FILE.pth "
      f"--output {default_weights_paths()[0]}`."
  )


def resolve_weights_path(path: str | None) -> str:
  """A local file with the weights: `path` if it exists (a remote `path` is copied into the
  local cache first), else the first default location that exists; else a clear error."""
  if path and paths.is_remote(path):
    try:
      local = paths.local_copy(path)
    except FileNotFoundError:
      raise WeightsNotFoundError(_missing_weights_message(path)) from None
    if not local.is_file():
      raise WeightsNotFoundError(f"{path} is a folder, not a weights file")
    return os.fspath(local)
  if path:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise WeightsNotFoundError(_missing_weights_message(path))
    return path
  for p in default_weights_paths():
    if os.path.exists(p):
      return p
  raise WeightsNotFoundError(_missing_weights_message(None))


# ----------------------------------------------------------------------------
# The network.


_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class BatchNorm(nn.Module):
  """Inference BatchNorm with torch's names for the statistics; float32 math."""

  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    mult = scale * jnp.reciprocal(jnp.sqrt(var + self.eps))
    return (x.astype(jnp.float32) - mean) * mult + bias


class BasicConv(nn.Module):
  features: int
  kernel: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Sequence[int] = (0, 0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(
        self.features,
        tuple(self.kernel),
        tuple(self.strides),
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_kernel_init,
        name="conv",
    )(x)
    return nn.relu(BatchNorm(name="bn")(x)).astype(self.dtype)


def _avg3(x):  # TF average pool: padded zeros are not counted
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  pool_features: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, dtype=self.dtype)
    b1 = c(64, (1, 1), name="branch1x1")(x)
    b5 = c(48, (1, 1), name="branch5x5_1")(x)
    b5 = c(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = c(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, dtype=self.dtype)
    b3 = c(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = c(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = c(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3s2(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, dtype=self.dtype)
    c7 = self.channels_7x7
    b1 = c(192, (1, 1), name="branch1x1")(x)
    b7 = c(c7, (1, 1), name="branch7x7_1")(x)
    b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = c(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = c(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, dtype=self.dtype)
    b3 = c(192, (1, 1), name="branch3x3_1")(x)
    b3 = c(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = c(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3s2(x)], -1)


class InceptionE(nn.Module):
  max_pool: bool  # FIDInceptionE_2 (Mixed_7c) pools with max, E_1 with a TF average
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, dtype=self.dtype)
    b1 = c(320, (1, 1), name="branch1x1")(x)
    b3 = c(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
        [
            c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ],
        -1,
    )
    bd = c(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
        [
            c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ],
        -1,
    )
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      pooled = _avg3(x)
    bp = c(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3(nn.Module):
  """FID InceptionV3: x [N, H, W, 3] in [-1, 1] -> pool features [N, 2048] float32."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.shape[1] < MIN_SIZE or x.shape[2] < MIN_SIZE:
      raise ValueError(
          f"Inception input must be at least {MIN_SIZE}x{MIN_SIZE}, got "
          f"{x.shape[1]}x{x.shape[2]}"
      )
    d = self.dtype
    c = functools.partial(BasicConv, dtype=d)
    x = x.astype(d)
    x = c(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = c(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = c(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3s2(x)
    x = c(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = c(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3s2(x)
    x = InceptionA(32, d, name="Mixed_5b")(x)
    x = InceptionA(64, d, name="Mixed_5c")(x)
    x = InceptionA(64, d, name="Mixed_5d")(x)
    x = InceptionB(d, name="Mixed_6a")(x)
    x = InceptionC(128, d, name="Mixed_6b")(x)
    x = InceptionC(160, d, name="Mixed_6c")(x)
    x = InceptionC(160, d, name="Mixed_6d")(x)
    x = InceptionC(192, d, name="Mixed_6e")(x)
    x = InceptionD(d, name="Mixed_7a")(x)
    x = InceptionE(False, d, name="Mixed_7b")(x)
    x = InceptionE(True, d, name="Mixed_7c")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def init_params(seed: int = 0) -> dict:
  """Random params (He-normal convs, identity BatchNorm) in numpy: tests and smoke runs only.

  The same distribution as `InceptionV3().init`, without compiling the init function.
  """
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      w = rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)
      return np.clip(w, -2 * np.sqrt(2.0 / fan_in), 2 * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (np.ones if name in ("scale", "var") else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, param_shapes())


def param_shapes() -> dict:
  """The params' shape tree (no allocation)."""
  x = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), x)["params"]


# ----------------------------------------------------------------------------
# Weights: pytorch-fid state dict -> Flax params.

_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")  # the classifier head is not part of the features


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """numpy arrays by pytorch-fid key from a `.pth` (torch, weights_only) or `.npz`."""
  path = resolve_weights_path(path)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs torch; convert it to .npz once with "
        "scripts/convert_inception_weights.py on a machine that has torch"
    ) from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(sd, Mapping):
    raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
  return {
      k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
      for k, v in sd.items()
  }


def params_from_state_dict(sd: Mapping[str, np.ndarray]) -> dict:
  """Maps pytorch-fid keys (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`) to params.

  Every network parameter must be present with its shape; unknown keys other than the
  classifier head (`fc.*`) and `num_batches_tracked` are an error (a wrong file).
  """
  expected = jax.tree_util.tree_map(lambda s: s.shape, param_shapes())
  params: dict = {}
  unknown = []
  for key, value in sd.items():
    if key.startswith(_IGNORED_PREFIXES) or key.endswith("num_batches_tracked"):
      continue
    parts = key.split(".")
    if len(parts) < 3 or parts[-2] not in ("conv", "bn"):
      unknown.append(key)
      continue
    *path, layer, leaf = parts
    value = np.asarray(value, np.float32)
    if layer == "conv" and leaf == "weight" and value.ndim == 4:
      name, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif layer == "bn" and leaf in _BN_LEAVES:
      name = _BN_LEAVES[leaf]
    else:
      unknown.append(key)
      continue
    node = params
    for p in path + [layer]:
      node = node.setdefault(p, {})
    node[name] = value
  if unknown:
    raise ValueError(
        f"not a pytorch-fid Inception state dict: unexpected keys {unknown[:5]}"
        f"{' ...' if len(unknown) > 5 else ''}"
    )
  flat_exp = {
      jax.tree_util.keystr(k): v
      for k, v in jax.tree_util.tree_flatten_with_path(
          expected, is_leaf=lambda x: isinstance(x, tuple)
      )[0]
  }
  flat_got = {
      jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  missing = sorted(set(flat_exp) - set(flat_got))
  if missing:
    raise ValueError(
        f"Inception state dict is missing {len(missing)} parameters, e.g. {missing[:3]}"
    )
  extra = sorted(set(flat_got) - set(flat_exp))
  if extra:
    raise ValueError(f"Inception state dict has unexpected parameters {extra[:3]}")
  bad = [
      (k, flat_got[k], tuple(flat_exp[k]))
      for k in flat_exp
      if tuple(flat_got[k]) != tuple(flat_exp[k])
  ]
  if bad:
    raise ValueError(f"Inception parameter shapes differ (key, file, expected): {bad[:3]}")
  return params


def load_params(path: str | None = None) -> dict:
  """Flax params from pytorch-fid's `.pth` or the converted `.npz` (no downloads)."""
  return params_from_state_dict(read_state_dict(path))


def params_identity(params) -> str:
  """A short content hash of the params (for cache keys)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# Preprocessing (clean-fid) and the batched, sharded extractor.


def check_images(images, name: str = "images") -> np.ndarray:
  """uint8 [N, H, W, 3] numpy, or a clear TypeError / ValueError."""
  if not isinstance(images, np.ndarray):
    images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(
        f"{name} must be uint8 in [0, 255] (the FID protocol quantises like a saved "
        f"PNG), got dtype {images.dtype}; convert floats in [-1, 1] with "
        "np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)"
    )
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{name} must be [N, H, W, 3], got shape {images.shape}")
  return images


def clean_resize(images: np.ndarray, size: int = FID_SIZE) -> np.ndarray:
  """clean-fid's resize: each uint8 channel as a float image, PIL bicubic, clip to [0, 255].

  Returns float32 [N, size, size, 3] in [0, 255]; images already `size` pass unchanged.
  """
  from PIL import Image

  images = check_images(images)
  n, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images.astype(np.float32)
  out = np.empty((n, size, size, 3), np.float32)
  for i in range(n):
    for ch in range(3):
      img = Image.fromarray(images[i, :, :, ch].astype(np.float32))  # mode "F"
      out[i, :, :, ch] = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
  return np.clip(out, 0.0, 255.0)


class FeatureExtractor:
  """uint8 images -> float32 [N, 2048] FID features, batched and sharded over local devices.

  Every call runs fixed-shape batches of `batch_size` (rounded up to a multiple of the
  local device count; the last batch is padded and the padding dropped), so one
  compilation serves any N. `dtype` is the compute dtype (bf16 works; BatchNorm, the
  pool and the output are float32). `image_size` is the network input size: 299 for FID;
  smaller (>= 75) only for tests, and such numbers are not FID.
  """

  def __init__(
      self,
      params,
      *,
      batch_size: int = 64,
      image_size: int = FID_SIZE,
      dtype=None,
      devices=None,
      weights_id: str | None = None,
  ):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    if image_size < MIN_SIZE:
      raise ValueError(f"image_size must be >= {MIN_SIZE}, got {image_size}")
    self.devices = list(devices or jax.local_devices())
    nd = len(self.devices)
    self.batch_size = -(-int(batch_size) // nd) * nd
    self.image_size = int(image_size)
    self.dtype = dtype or jnp.float32
    self.weights_id = weights_id or params_identity(params)
    mesh = Mesh(np.array(self.devices), ("data",))
    self._in_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    self._params = jax.device_put(params, replicated)
    model = InceptionV3(dtype=self.dtype)

    def forward(params, x):  # x: float32 [B, S, S, 3] in [0, 255]
      return model.apply({"params": params}, x / 255.0 * 2.0 - 1.0)

    self._forward = jax.jit(
        forward, in_shardings=(replicated, self._in_sharding), out_shardings=self._in_sharding
    )

  @classmethod
  def from_weights(cls, path: str | None = None, **kw) -> "FeatureExtractor":
    params = load_params(path)
    return cls(params, **kw)

  @classmethod
  def random(cls, seed: int = 0, **kw) -> "FeatureExtractor":
    """Random weights (tests, smoke runs): the distances are not FID values."""
    return cls(init_params(seed), weights_id=f"random-{seed}", **kw)

  @property
  def identity(self) -> str:
    """Weights hash + input size + dtype: what a cached statistic depends on."""
    return f"{self.weights_id}-s{self.image_size}-{np.dtype(self.dtype).name}"

  def __call__(self, images) -> np.ndarray:
    images = check_images(images)
    n = images.shape[0]
    out = np.empty((n, FEATURE_DIM), np.float32)
    bs = self.batch_size
    for start in range(0, n, bs):
      chunk = clean_resize(images[start : start + bs], self.image_size)
      m = chunk.shape[0]
      if m < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], np.float32)])
      x = jax.device_put(chunk, self._in_sharding)
      feats = jax.device_get(self._forward(self._params, x))
      out[start : start + m] = feats[:m]
    return out
