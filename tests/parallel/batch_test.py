import numpy as np
import pytest

from imagen_jax.parallel import batch as batch_lib
from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import sharding as sharding_lib


def test_divisibility_errors_name_the_numbers():
  mesh = mesh_lib.create_mesh([("data", 4), ("fsdp", 2)])
  assert batch_lib.check_batch_size(16, mesh) == 16
  with pytest.raises(ValueError, match=r"Global batch size 12 is not divisible by the 8 devices"):
    batch_lib.check_batch_size(12, mesh)
  with pytest.raises(ValueError, match=r"process count 3"):
    batch_lib.check_batch_size(16, mesh, process_count=3)


def test_make_global_batch():
  mesh = mesh_lib.create_mesh([("data", -1)])
  sh = sharding_lib.batch_sharding(mesh)
  out = batch_lib.make_global_batch({"x": np.arange(16.0).reshape(8, 2)}, sh)
  np.testing.assert_array_equal(np.asarray(out["x"]), np.arange(16.0).reshape(8, 2))
  assert out["x"].sharding == sh
  with pytest.raises(TypeError, match="caption"):
    batch_lib.make_global_batch({"caption": np.array(["a"] * 8, dtype=object)}, sh)
