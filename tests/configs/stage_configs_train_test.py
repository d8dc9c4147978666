"""Every Imagen stage config trains as its docstring says (`variant=tiny,runlocal`), through
the trainer's entry point: the model takes the config's crops, the evals entries build and
run, checkpoints and final metrics are written. Config-level checks alone missed all three."""

import json
import pathlib

import numpy as np
import pytest

from imagen_jax.launch import sweep as sweep_lib
from imagen_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Slow tier (.ci/run runs it once): each compiles a whole stage (80-100 s on 2 cores); the
# default run keeps the real stage through tests/train/stage_task_test.py.
STAGES = [
    pytest.param(
        "base64", "variant=tiny,runlocal,inception=random:0", marks=pytest.mark.slow
    ),  # with the in-loop FID
    pytest.param("sr256", "variant=tiny,runlocal", marks=pytest.mark.slow),
    pytest.param("sr1024", "variant=tiny,runlocal", marks=pytest.mark.slow),  # as sr256
    # GLIDE-style inpainting stages: random box masks drawn in the loss, 4 extra channels.
    pytest.param("shapes", "stage=inpaint,runlocal", marks=pytest.mark.slow),
    pytest.param("base64", "variant=tiny,runlocal,inpaint=True", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    "name,arg", STAGES, ids=["base64", "sr256", "sr1024", "shapes_inpaint", "base64_inpaint"]
)
def test_runlocal_config_trains_and_writes_its_metrics(name, arg, tmp_path):
  config = sweep_lib.load_module(ROOT / "configs" / f"{name}.py").get_config(arg)
  if "fid" in config.evals:
    config.evals.fid.inception_image_size = 75  # Inception's smallest input: CI time
  loop.train_and_evaluate(config, str(tmp_path))
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert final["step"] == config.total_steps == 3
  assert np.isfinite(final["loss"]) and final["nonfinite"] == 0
  assert any((tmp_path / "checkpoints").iterdir())
  if "fid" in config.evals:  # random Inception weights: a finite number, not an FID to compare
    assert np.isfinite(final["fid/fid"]) and final["fid/fid"] >= 0


def test_base64_fid_needs_a_reference_set():
  module = sweep_lib.load_module(ROOT / "configs" / "base64.py")
  # Zero-shot: whatever the training data (the default is a prepared web set), the
  # in-loop FID's reference is COCO, or the shapes world's held-out split for shapes.
  folder = module.get_config("variant=tiny,data=/some/folder,inception=/w.pth")
  assert folder.evals.fid.dataset == "coco" and folder.input.dataset == "folder"
  assert (
      module.get_config("variant=tiny,data=shapes,inception=/w.pth").evals.fid.dataset == "shapes"
  )
  coco = module.get_config("variant=small,inception=/w.pth")
  assert coco.input.dataset == "tfds:laion_subset"
  assert coco.evals.fid.dataset == "coco" and coco.evals.fid.tfds_name == "coco_captions"
  coco.input.data_dir = "/data/tfds"  # one override points both the input and the FID at it
  assert coco.evals.fid.data_dir == "/data/tfds"
  assert not module.get_config("variant=small").evals


@pytest.mark.slow  # the 64x64 decoder's whole stage compile, with a Hugging Face CLIP inside
def test_base64_unclip_decoder_trains_on_an_imported_clip(tmp_path):
  """configs/base64.py:decoder_clip= with a random-weight transformers CLIPModel directory
  (tests/clip/hf_clip_fixture.py, projection_dim 24, 30 px): the preprocess resizes the
  64x64 images to the CLIP's size and embeds them, the decoder trains on them."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  pytest.importorskip("transformers")
  spec = importlib.util.spec_from_file_location(
      "hf_clip_fixture", ROOT / "tests" / "clip" / "hf_clip_fixture.py"
  )
  fixture = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fixture)
  _, clip_dir = fixture.write_clip_dir(tmp_path / "clip")
  module = sweep_lib.load_module(ROOT / "configs" / "base64.py")
  config = module.get_config(f"variant=tiny,runlocal,decoder_clip={clip_dir},decoder_dim=24")
  loop.train_and_evaluate(config, str(tmp_path / "decoder"))
  final = json.loads((tmp_path / "decoder" / "final_metrics.json").read_text())
  assert final["step"] == 3 and np.isfinite(final["loss"])
  wrong = module.get_config(f"variant=tiny,runlocal,decoder_clip={clip_dir}")  # 768 default
  with pytest.raises(ValueError, match="gives 24-dim image embeddings but the decoder takes"):
    loop.train_and_evaluate(wrong, str(tmp_path / "wrong"))
