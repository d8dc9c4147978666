"""An unbuilt `tfds:NAME` names the dataset, the data_dir and the prepare command, also in
an install without TensorFlow (where TFDS's registered coco_captions builder cannot even be
constructed); a prepared dataset still reads there."""

import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from imagen_jax.data import input_pipeline
from imagen_jax.data.prepare import convert

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Makes TensorFlow unimportable, as in an install without it (find_spec -> None, so TFDS
# and etils see it as absent), as in tests/data/prepare_data_test.py.
NO_TF = """
import sys
class _NoTF:
  def __init__(self, f): self.f = f
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      return None
    find = getattr(self.f, "find_spec", None)
    return find(name, path, target) if find else None
sys.meta_path[:] = [_NoTF(f) for f in sys.meta_path]
"""

_READ = """
import importlib.util
assert importlib.util.find_spec("tensorflow") is None
from imagen_jax.data import input_pipeline
for name, data_dir in {cases!r}:
  cfg = {{"dataset": "tfds:" + name, "data_dir": data_dir, "num_epochs": 1}}
  try:
    it = input_pipeline.create_input_iterator(
        cfg, global_batch_size=1, resolution=8, seed=0, process_index=0, process_count=1,
        devices_per_process=1)
    print("READ", name, sum(1 for _ in it))
  except Exception as e:  # pylint: disable=broad-except
    print("ERROR", name, type(e).__name__, str(e).replace("\\n", " | "))
"""


def _run_without_tf(cases, env=None):
  proc = subprocess.run(
      [sys.executable, "-c", NO_TF + _READ.format(cases=cases)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=240,
      env={**os.environ, **(env or {})},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _prepared(tmp_path):
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(2):
    Image.new("RGB", (12, 10), (i * 100, 20, 20)).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(f"caption {i}")
  convert.prepare(
      source="folder",
      path=str(folder),
      name="mine",
      output_dir=str(tmp_path / "tfds"),
      num_workers=0,
      log=lambda *_: None,
  )
  return str(tmp_path / "tfds")


def test_unbuilt_tfds_names_the_dataset_dir_and_command_without_tensorflow(tmp_path):
  data_dir = _prepared(tmp_path)
  default_dir = tmp_path / "default_tfds"
  default_dir.mkdir()
  out = _run_without_tf(
      [
          ("coco_captions", data_dir),
          ("other", data_dir),
          ("coco_captions", None),
          ("mine", data_dir),
      ],
      env={"TFDS_DATA_DIR": str(default_dir)},
  )
  lines = [l for l in out.splitlines() if l.startswith(("READ", "ERROR"))]
  assert len(lines) == 4, out
  coco_here, other, coco_default, mine = lines
  for line, where in ((coco_here, data_dir), (coco_default, str(default_dir))):
    assert line.startswith("ERROR coco_captions FileNotFoundError"), line
    assert "No module named" not in line and where in line, line
    assert "python scripts/prepare_data.py --source coco_json" in line, line
    assert f"--output_dir {where}" in line and "docs/zero_to_fid.md" in line, line
  assert other.startswith("ERROR other FileNotFoundError"), other
  assert "'other'" in other and data_dir in other, other
  assert "--name other" in other and f"--output_dir {data_dir}" in other, other
  assert mine == "READ mine 2", out


def test_unbuilt_tfds_message_in_process(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    input_pipeline.make_source({"dataset": "tfds:coco_captions", "data_dir": str(tmp_path)}, 8)
  msg = str(e.value)
  assert "'coco_captions'" in msg and str(tmp_path) in msg, msg
  assert "--source coco_json" in msg and f"--output_dir {tmp_path}" in msg, msg
