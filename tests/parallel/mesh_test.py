import jax
import pytest

from imagen_jax.parallel import mesh as mesh_lib


def test_minus_one_takes_remaining_devices():
  mesh = mesh_lib.create_mesh([("data", -1), ("fsdp", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  assert mesh_lib.data_axes(mesh) == ("data", "fsdp")
  assert mesh_lib.data_parallel_size(mesh) == 8


def test_explicit_subset_of_devices():
  mesh = mesh_lib.create_mesh([("data", 2), ("fsdp", 2)], devices=jax.devices()[:4])
  assert mesh.devices.size == 4


@pytest.mark.parametrize(
    "spec, match",
    [
        ([], "empty"),
        ([("data", -1), ("fsdp", -1)], "At most one"),
        ([("data", 3), ("fsdp", 1)], "has 3 devices in total, but there are 8"),
        ([("data", -1), ("fsdp", 3)], "multiple of 3 devices"),
        ([("data", 0)], "size 0"),
        ([("data", 4), ("data", 2)], "appears twice"),
        ([("data",)], "not a \\(name, size\\) pair"),
    ],
)
def test_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.create_mesh(spec)
