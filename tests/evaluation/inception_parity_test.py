"""The Flax FID Inception against independent PyTorch forwards, on random weights.

1. `TorchFidInception` below is the pytorch-fid architecture written here in plain torch.nn
   (Conv2d / BatchNorm2d in eval / F.avg_pool2d(count_include_pad=False) / F.max_pool2d),
   with pytorch-fid's state-dict key names. Random weights are saved as a .pth, loaded
   into Flax through the real loader (`inception.load_params`) and the pool features
   compared. This checks the key mapping, the kernel layout and the layer math against
   torch's own conv/pool implementations.
2. The same against pytorch-fid's own modules (its FIDInception* blocks patched into
   torchvision's Inception3, exactly as `pytorch_fid.inception.fid_inception_v3` builds
   it, minus the weight download) when pytorch-fid and torchvision import; here they do
   not (torchvision from PyPI breaks beside torch 2.13.0 CPU), so that test skips.
"""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from imagen_jax.evaluation import inception  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 99  # any size >= 75 exercises every layer; 299 is slow on 2 CPU cores


class Conv(nn.Module):

  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _tf_avg(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class A(nn.Module):

  def __init__(self, cin, pool):
    super().__init__()
    self.branch1x1 = Conv(cin, 64, kernel_size=1)
    self.branch5x5_1 = Conv(cin, 48, kernel_size=1)
    self.branch5x5_2 = Conv(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, padding=1)
    self.branch_pool = Conv(cin, pool, kernel_size=1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg(x))], 1)


class B(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = Conv(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class C(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = Conv(cin, 192, kernel_size=1)
    self.branch7x7_1 = Conv(cin, c7, kernel_size=1)
    self.branch7x7_2 = Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = Conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = Conv(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = Conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = Conv(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg(x))], 1)


class D(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = Conv(cin, 192, kernel_size=1)
    self.branch3x3_2 = Conv(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = Conv(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Conv(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class E(nn.Module):

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = Conv(cin, 320, kernel_size=1)
    self.branch3x3_1 = Conv(cin, 384, kernel_size=1)
    self.branch3x3_2a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = Conv(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = Conv(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = Conv(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TorchFidInception(nn.Module):
  """pytorch-fid's FID InceptionV3 up to the 2048-d pool (plus the unused 1008-way fc)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = Conv(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = Conv(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = Conv(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = Conv(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = Conv(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    self.Mixed_6a = B(288)
    self.Mixed_6b, self.Mixed_6c = C(768, 128), C(768, 160)
    self.Mixed_6d, self.Mixed_6e = C(768, 160), C(768, 192)
    self.Mixed_7a = D(768)
    self.Mixed_7b, self.Mixed_7c = E(1280, False), E(2048, True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x):  # x: NCHW in [-1, 1]
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def randomize(module, seed=0):
  """Random conv weights (He) and non-trivial BatchNorm statistics."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.1 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
  return module.eval()


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  return randomize(TorchFidInception(), seed=0)


@pytest.fixture(scope="module")
def pth_path(torch_model, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("weights") / "pt_inception-random.pth")
  torch.save(torch_model.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def uint8_images():
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.float32)
  # Smooth-ish content (upsampled noise) plus fine noise: exercises the resize too.
  big = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)
  return np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8)


def _torch_features(model, x_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def test_state_dict_keys_are_pytorch_fid_names(torch_model):
  keys = set(torch_model.state_dict())
  assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in keys
  assert "Conv2d_1a_3x3.conv.weight" in keys and "fc.weight" in keys


def test_flax_matches_plain_torch_on_random_weights(torch_model, pth_path, uint8_images):
  params = inception.load_params(pth_path)
  extractor = inception.FeatureExtractor(params, batch_size=4, image_size=SIZE)
  got = extractor(uint8_images)
  x = inception.clean_resize(uint8_images, SIZE) / 255.0 * 2.0 - 1.0
  want = _torch_features(torch_model, x)
  assert got.shape == (3, 2048) and got.dtype == np.float32
  scale = np.abs(want).max()
  err = np.abs(got - want).max() / scale
  print(
      f"Flax vs plain-torch FID Inception (random weights, {SIZE}px): max |diff| / "
      f"max |ref| = {err:.2e}, ref max {scale:.3g}"
  )
  assert err < 1e-4, err
  # bf16 compute stays close and still returns float32 features.
  bf16 = inception.FeatureExtractor(params, batch_size=4, image_size=SIZE, dtype=jnp.bfloat16)
  got16 = bf16(uint8_images)
  assert got16.dtype == np.float32
  rel16 = np.linalg.norm(got16 - want) / np.linalg.norm(want)
  print(f"bf16 compute: relative L2 error {rel16:.2e}")
  assert rel16 < 0.1, rel16


def test_npz_conversion_round_trip(pth_path, tmp_path):
  out = str(tmp_path / "w.npz")
  subprocess.run(
      [
          sys.executable,
          os.path.join(REPO, "scripts", "convert_inception_weights.py"),
          "--input",
          pth_path,
          "--output",
          out,
      ],
      check=True,
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  a, b = inception.load_params(pth_path), inception.load_params(out)
  assert inception.params_identity(a) == inception.params_identity(b)


def test_loader_rejects_wrong_files(pth_path, tmp_path):
  sd = inception.read_state_dict(pth_path)
  bad = dict(sd)
  del bad["Mixed_6b.branch7x7_2.conv.weight"]
  with pytest.raises(ValueError, match="missing 1 parameters"):
    inception.params_from_state_dict(bad)
  bad = dict(sd)
  bad["Mixed_6b.branch7x7_2.conv.weight"] = bad["Mixed_6b.branch7x7_2.conv.weight"][..., :3]
  with pytest.raises(ValueError, match="shapes differ"):
    inception.params_from_state_dict(bad)
  with pytest.raises(ValueError, match="unexpected keys"):
    inception.params_from_state_dict({**sd, "layer1.0.weight": np.zeros(3)})
  with pytest.raises(inception.WeightsNotFoundError, match="pytorch-fid/releases"):
    inception.load_params(str(tmp_path / "nope.pth"))


def _pytorch_fid_modules():
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
  except Exception as e:  # ImportError, or torchvision's operator-registration RuntimeError
    return None, f"pytorch-fid/torchvision not importable here ({type(e).__name__}: {e})"
  return pf, None


def test_flax_matches_pytorch_fid_modules(torch_model, pth_path, uint8_images):
  pf, reason = _pytorch_fid_modules()
  if pf is None:
    pytest.skip(reason + "; the plain-torch reference above covers the same architecture")
  # fid_inception_v3() minus its download: torchvision trunk + pytorch-fid's FID blocks.
  net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pf.FIDInceptionE_1(1280)
  net.Mixed_7c = pf.FIDInceptionE_2(2048)
  net.load_state_dict(torch.load(pth_path, weights_only=True), strict=False)
  net.eval()
  blocks = [
      net.Conv2d_1a_3x3,
      net.Conv2d_2a_3x3,
      net.Conv2d_2b_3x3,
      nn.MaxPool2d(3, 2),
      net.Conv2d_3b_1x1,
      net.Conv2d_4a_3x3,
      nn.MaxPool2d(3, 2),
      net.Mixed_5b,
      net.Mixed_5c,
      net.Mixed_5d,
      net.Mixed_6a,
      net.Mixed_6b,
      net.Mixed_6c,
      net.Mixed_6d,
      net.Mixed_6e,
      net.Mixed_7a,
      net.Mixed_7b,
      net.Mixed_7c,
      nn.AdaptiveAvgPool2d((1, 1)),
  ]
  ref = nn.Sequential(*blocks).eval()
  x = inception.clean_resize(uint8_images, SIZE) / 255.0 * 2.0 - 1.0
  want = _torch_features(lambda t: ref(t).flatten(1), x)
  got = inception.FeatureExtractor(inception.load_params(pth_path), batch_size=4, image_size=SIZE)(
      uint8_images
  )
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
