import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

from imagen_jax.train import flops, metrics


def _events(logdir):
  out = []
  for path in pathlib.Path(logdir).glob("events.out.tfevents.*"):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      out.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
      pos += 12 + length + 4
  return out


def test_event_file_has_scalars_and_images(tmp_path):
  w = metrics.MetricWriter(tmp_path, enabled=True)
  w.write_scalars(3, {"loss": 0.5, "mfu": "n/a"})
  w.write_images(3, {"samples": np.zeros((4, 6, 3), np.uint8)})
  w.close()
  events = _events(tmp_path)
  assert events[0].file_version == "brain.Event:2"
  values = {v.tag: v for e in events[1:] for v in e.summary.value}
  assert values["loss"].simple_value == 0.5 and "mfu" not in values
  assert values["samples"].image.height == 4 and values["samples"].image.width == 6
  assert values["samples"].image.encoded_image_string[:4] == b"\x89PNG"


def test_disabled_writer_writes_nothing(tmp_path):
  w = metrics.MetricWriter(tmp_path / "x", enabled=False)
  w.write_scalars(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "x").exists()


def test_grid_and_console_line():
  grid = metrics.image_grid(np.zeros((5, 4, 4, 3), np.uint8), ncols=3, pad=1)
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
  line = metrics.console_line(
      50,
      100,
      {"loss": 0.25, "steps_per_sec": 2.0, "mfu": "n/a", "images_per_sec": 64.0, "lr": 1e-4},
  )
  assert "50/100" in line and "loss 0.2500" in line and "MFU n/a" in line and "ETA 0m25s" in line
  np.testing.assert_array_equal(metrics.to_uint8(np.array([-1.0, 0.0, 1.0])), [0, 128, 255])


def test_peak_table_and_mfu():
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989
  assert flops.peak_tflops("NVIDIA H200") == 989
  assert flops.peak_tflops("NVIDIA A100-SXM4-40GB") == 312
  assert flops.peak_tflops("TPU v4") == 275
  assert flops.peak_tflops("TPU v5 lite") == 197
  assert flops.peak_tflops("TPU v5p") == 459
  assert flops.peak_tflops("cpu") is None
  assert flops.throughput(1e12, 2.0) == {"tflops_per_device": 2.0, "mfu": "n/a"}  # on CPU
  t = flops.throughput(1e12, 2.0, device_kind="TPU v4")
  np.testing.assert_allclose(t["mfu"], 2.0 / 275)


def test_compiled_flops_per_device():
  f = jax.jit(lambda a, b: a @ b)
  compiled = f.lower(jnp.zeros((64, 128)), jnp.zeros((128, 32))).compile()
  n = flops.compiled_flops_per_device(compiled)
  assert n is not None and 0.9 * 2 * 64 * 128 * 32 <= n <= 1.2 * 2 * 64 * 128 * 32
  assert "per device" in flops.memory_summary(compiled)


def test_lowered_flops_count_convolutions_analytically():
  x = jnp.zeros((4, 16, 16, 8))
  w = jnp.zeros((3, 3, 8, 16))
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  n = flops.lowered_flops(jax.jit(conv).lower(x, w))
  # VALID padding: 14 x 14 outputs, each 3*3*8 multiply-adds per output channel (XLA does not
  # count the zero taps of SAME padding).
  assert n == pytest.approx(2 * 4 * 14 * 14 * 16 * 3 * 3 * 8, rel=0.02)


def test_step_flops_split_over_the_partitions():
  """A data-parallel matmul over the 8 devices: the lowered (global) count split 8 ways equals
  the compiled per-device program's count."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  f = jax.jit(lambda a, b: a @ b, in_shardings=(sh, rep), out_shardings=sh)
  lowered = f.lower(jnp.zeros((256, 128)), jnp.zeros((128, 64)))
  compiled = lowered.compile()
  per_device = flops.step_flops_per_device(lowered, compiled, jax.device_count())
  assert per_device == pytest.approx(2 * 256 * 128 * 64 / 8, rel=0.05)
  assert per_device == pytest.approx(flops.compiled_flops_per_device(compiled), rel=0.1)
