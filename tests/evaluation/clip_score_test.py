"""CLIP score (imagen_jax.evaluation.clip_score) against transformers' PyTorch CLIPModel on
random weights, the `clip_score` evaluator of `config.evals`, and CLIP score beside FID in
the COCO harness (imagen_jax.evaluation.curve) and in scripts/eval_fid.py --clip_path.

The reference is computed directly with transformers: `get_image_features` /
`get_text_features`, cosine, 100 * max(cos, 0) per pair; ours matches within 1e-3 (on the
×100 scale).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import zlib

import ml_collections
import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.evaluation import clip_score as clip_score_lib
from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import curve
from imagen_jax.evaluation import evaluators

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location(
    "hf_clip_fixture", ROOT / "tests" / "clip" / "hf_clip_fixture.py"
)
fixture = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fixture)

MAX_LEN = 128  # the letter-level tokenizer needs ~1 token per letter of a shapes caption
TOL = 1e-3


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
  return fixture.write_clip_dir(tmp_path_factory.mktemp("hf") / "tiny-clip", max_len=MAX_LEN)


@pytest.fixture(scope="module")
def clip_model(hf_clip):
  return clip_score_lib.load(str(hf_clip[1]))


def _reference(model, path, images, captions):
  """Raw cosines of transformers' CLIPModel (exact-size images: no resize)."""
  px = (images / 255.0 - np.asarray(fixture.MEAN)) / np.asarray(fixture.STD)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  ids = tok(captions, padding="max_length", max_length=MAX_LEN, return_tensors="pt")
  with torch.no_grad():
    img = model.get_image_features(pixel_values=torch.from_numpy(px.transpose(0, 3, 1, 2)).float())
    txt = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    return torch.nn.functional.cosine_similarity(img, txt, dim=-1).double().numpy()


def _images(n, seed=0, size=fixture.IMAGE_SIZE):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


CAPTIONS = ["the cat", "a red circle", "there is a large purple square", "", "cat the cat", "zz"]


def test_matches_transformers_reference(hf_clip, clip_model):
  model, path = hf_clip
  images = _images(len(CAPTIONS))
  ref_cos = _reference(model, path, images, CAPTIONS)
  res = clip_score_lib.clip_score(clip_model, images, CAPTIONS, batch_size=4)  # padded batch
  ref = 100 * np.maximum(ref_cos, 0)
  print(f"cosines {np.round(ref_cos, 4)}; ours {res.mean:.5f} vs transformers {ref.mean():.5f}")
  np.testing.assert_allclose(res.cosine * 100, ref_cos * 100, rtol=0, atol=TOL)
  np.testing.assert_allclose(res.per_sample, ref, rtol=0, atol=TOL)
  assert abs(res.mean - ref.mean()) < TOL
  # Torchmetrics clamps the mean instead: recoverable from the mean cosine.
  d = res.as_dict()
  assert abs(max(100 * d["clip_score_mean_cosine"], 0) - max(100 * ref_cos.mean(), 0)) < TOL
  assert d["clip_score_negative_pairs"] == int(np.sum(ref_cos < 0))
  # The convention is in the output.
  assert d["clip_score_scale"] == 100.0 and d["clip_score_pairs"] == len(CAPTIONS)
  assert d["clip_score_formula"] == "mean_i 100 * max(cos(image_i, caption_i), 0)"
  assert d["clip_backbone"] == "ViT(width=36,layers=2)/6@30px (tiny-clip)"
  # Hessel et al.'s CLIPScore: w = 2.5 on the same cosines.
  hessel = clip_score_lib.clip_score(clip_model, images, CAPTIONS, scale=2.5)
  np.testing.assert_allclose(hessel.per_sample, 2.5 * np.maximum(ref_cos, 0), atol=TOL / 40)
  assert hessel.as_dict()["clip_score_scale"] == 2.5


def test_a_negative_cosine_scores_zero():
  class Fixed:  # duck-typed: any encode_images / encode_texts; `name` is the backbone
    name = "fixed-test-clip"

    def encode_images(self, images):
      return np.tile([[1.0, 0.0]], (len(images), 1))

    def encode_texts(self, texts):
      return np.asarray([[1.0, 1.0] if t == "pos" else [-1.0, 0.2] for t in texts])

  res = clip_score_lib.clip_score(Fixed(), _images(2), ["pos", "neg"])
  np.testing.assert_allclose(res.cosine, [np.sqrt(0.5), -1 / np.sqrt(1.04)])
  np.testing.assert_allclose(res.per_sample, [100 * np.sqrt(0.5), 0.0])
  assert res.backbone == "fixed-test-clip" and res.as_dict()["clip_score_negative_pairs"] == 1


def test_errors(hf_clip, clip_model, tmp_path):
  with pytest.raises(ValueError, match="3 images for 2 captions"):
    clip_score_lib.clip_score(clip_model, _images(3), ["a", "b"])
  long = "the cat " * 70
  with pytest.raises(ValueError, match=r"caption 1 \('the cat the cat.*longer than the encoder"):
    clip_score_lib.clip_score(clip_model, _images(2), ["ok", long])
  with pytest.raises(ValueError, match="scale=0.0 must be a positive"):
    clip_score_lib.clip_score(clip_model, _images(1), ["a"], scale=0)
  with pytest.raises(TypeError, match="not one string"):
    clip_score_lib.clip_score(clip_model, _images(1), "a")
  missing = str(tmp_path / "no_clip")
  with pytest.raises(FileNotFoundError, match=f"clip_path='{missing}' does not exist"):
    clip_score_lib.load(missing)
  t5 = tmp_path / "t5"
  t5.mkdir()
  (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(ValueError, match=f"clip_path='{t5}' is not a usable CLIP.*not CLIP"):
    clip_score_lib.load(str(t5))


def _caption_sample_fn(size=40):
  """A deterministic function of the captions (and the seed): a shapes render per caption."""

  def sample_fn(params, captions, rng_seed):
    del params
    return np.stack(
        [
            shapes.render(
                shapes.sample_scene(np.random.default_rng([zlib.crc32(c.encode()), rng_seed])), size
            )
            for c in captions
        ]
    )

  return sample_fn


def test_evaluator_from_config(hf_clip, clip_model, tiny_coco):
  path = str(hf_clip[1])
  evals = ml_collections.ConfigDict()
  evals.clip_score = dict(
      type="clip_score",
      log_steps=10,
      num_samples=6,
      clip_path=path,
      captions="shapes",
      seed=3,
      sample_batch_size=4,
  )
  evals.clip_coco = dict(
      type="clip_score",
      log_steps=20,
      num_samples=5,
      clip_path=path,
      captions="coco",
      annotations=tiny_coco[0],
      image_dir=tiny_coco[1],
  )
  sample_fn = _caption_sample_fn()
  built = evaluators.from_config(evals, sample_fn)
  built = {n: (e, s) for n, e, s in built}
  assert {n: (type(e).__name__, s) for n, (e, s) in built.items()} == {
      "clip_score": ("ClipScoreEvaluator", 10),
      "clip_coco": ("ClipScoreEvaluator", 20),
  }
  ev, coco_ev = built["clip_score"][0], built["clip_coco"][0]
  assert ev.backbone == "ViT(width=36,layers=2)/6@30px (tiny-clip)"
  metrics = dict(ev.run("params"))
  assert set(metrics) == {"clip_score", "clip_score_scale"} and metrics["clip_score_scale"] == 100
  # The FID evaluator's draw of the same source and seed; batch k sampled with its seed.
  from imagen_jax.data import sources  # pylint: disable=import-outside-toplevel

  src = sources.ShapesSource(16, "heldout", 1)
  captions = [src.read(i, np.random.default_rng([3, i]))[1] for i in range(6)]
  assert ev.captions() == captions
  images = np.concatenate(
      [
          sample_fn(None, captions[lo : lo + 4], coco_fid.seed_for_shard(3, k))
          for k, lo in enumerate(range(0, 6, 4))
      ]
  )
  want = clip_score_lib.clip_score(clip_model, images, captions).mean
  assert abs(metrics["clip_score"] - want) < 1e-5
  assert dict(ev.run("params")) == metrics  # the same captions and seeds every time
  coco = dict(coco_ev.run("params"))
  assert 0 <= coco["clip_score"] <= 100 and len(coco_ev.captions()) == 5
  assert all(c.endswith(")") and "variant" in c for c in coco_ev.captions())


def test_evaluator_errors(hf_clip, tmp_path):
  path = str(hf_clip[1])
  with pytest.raises(FileNotFoundError, match="clip_path="):
    evaluators.from_config(
        {"c": dict(type="clip_score", log_steps=1, clip_path=str(tmp_path / "x"))}, None
    )
  with pytest.raises(ValueError, match="captions='laion'"):
    evaluators.from_config(
        {"c": dict(type="clip_score", log_steps=1, clip_path=path, captions="laion")}, None
    )
  listed = ["a cat", "the cat " * 70]
  with pytest.raises(ValueError, match=r"caption 1 \('the cat the cat"):
    evaluators.from_config(
        {"c": dict(type="clip_score", log_steps=1, clip_path=path, captions=listed, num_samples=2)},
        None,
    )


def _harness(tiny_coco, extractor, out_dir, num_samples=8):
  source = coco_fid.open_source(*tiny_coco)
  protocol = coco_fid.Protocol(num_samples=num_samples, seed=5, resolution=32, shard_size=3)
  h = coco_fid.CocoFid(source, extractor, str(out_dir), protocol)
  h.draw()
  return h


def test_clip_beside_fid_in_the_harness(
    hf_clip, clip_model, tiny_coco, small_extractor, make_sample_fn, tmp_path
):
  scorer = clip_score_lib.ClipScorer(clip_model, batch_size=4)
  sample_fn = make_sample_fn(48)
  # Fresh: scored as the harness samples.
  h = _harness(tiny_coco, small_extractor, tmp_path / "a")
  clip = curve.ClipBesideFid(scorer, h)
  result = h.evaluate(clip.wrap(sample_fn, "default"), "default")
  calls = len(sample_fn.calls)
  scored = clip.finish(sample_fn, "default")
  assert len(sample_fn.calls) == calls == 3  # nothing sampled twice
  images = np.concatenate([sample_fn(c, coco_fid.seed_for_shard(5, k)) for k, c in clip.shards])
  captions = h.draw()["captions"]
  want = scorer.score(coco_fid.to_resolution(images, 32), captions)
  assert abs(scored.mean - want.mean) < 1e-5 and result["fid"] > 0
  assert sorted(os.listdir(tmp_path / "a" / "default" / "clip_score")) == [
      f"shard-{k:05d}.npz" for k in range(3)
  ]
  # FID shards made without the CLIP: from saved images, or sampled again (same samples).
  for save_images, resampled in ((True, 0), (False, 3)):
    out = tmp_path / f"b{int(save_images)}"
    h2 = _harness(tiny_coco, small_extractor, out)
    h2.evaluate(sample_fn, "default", save_images=save_images)
    before = len(sample_fn.calls)
    again = curve.ClipBesideFid(scorer, h2).finish(sample_fn, "default")
    assert len(sample_fn.calls) - before == resampled
    assert abs(again.mean - want.mean) < 1e-5
  # Another CLIP's cosines are not mixed in.
  other = curve.ClipBesideFid(clip_score_lib.ClipScorer(clip_model, backbone="other"), h)
  with pytest.raises(ValueError, match="scored with CLIP .* not 'other'"):
    other.finish(sample_fn, "default")
  # Too-long captions (a CLIP of 16 positions) fail before anything is sampled, named.
  _, short = fixture.write_clip_dir(tmp_path / "short", max_len=16)
  with pytest.raises(ValueError, match=r"caption 0 \('.*'\) is \d+ tokens"):
    curve.ClipBesideFid(clip_score_lib.ClipScorer.from_path(str(short)), h)


def test_curve_json():
  results = [
      {"name": f"base_w{w:g}", "fid": f, "clip_score": c, "settings": {"base_guidance_scale": w}}
      for w, f, c in ((1.0, 30.0, 25.0), (3.0, 20.0, 27.5))
  ]
  info = {"clip_backbone": "ViT-L/14", "clip_score_scale": 100.0, "clip_score_formula": "f"}
  c = curve.fid_vs_clip_score(results, info)
  assert c["points"] == [
      {"guidance_scale": 1.0, "fid": 30.0, "clip_score": 25.0, "run": "base_w1"},
      {"guidance_scale": 3.0, "fid": 20.0, "clip_score": 27.5, "run": "base_w3"},
  ]
  assert c["clip_backbone"] == "ViT-L/14" and c["clip_score_scale"] == 100.0
  assert "| 3 | 20.000 | 27.500 |" in curve.curve_table(c)


def _script_args(tiny_coco, workdir, out, clip_path):
  return [
      sys.executable,
      str(ROOT / "scripts" / "eval_fid.py"),
      f"--workdir_base={workdir}",
      f"--coco_annotations={tiny_coco[0]}",
      f"--coco_images={tiny_coco[1]}",
      f"--output_dir={out}",
      "--inception_weights=random:0",
      "--inception_image_size=75",
      "--inception_batch_size=8",
      "--resolution=32",
      "--num_samples=4",
      "--shard_size=4",
      "--batch_size=4",
      "--num_steps=1",
      "--sampler=ddim",
      "--guidance_sweep=1,3",
      f"--clip_path={clip_path}",
      "--clip_batch_size=4",
  ]


def _script_env():
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_eval_fid_script_bad_clip_path_fails_before_loading_stages(tiny_coco, tmp_path):
  args = _script_args(tiny_coco, tmp_path / "no_workdir", tmp_path / "out", tmp_path / "nope")
  bad = subprocess.run(args, env=_script_env(), capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  assert f"clip_path='{tmp_path / 'nope'}' does not exist" in bad.stderr


@pytest.mark.slow  # ~2.5 min on 2 shared cores (stage load, sampling and CLIP compiles)
def test_eval_fid_script_with_clip_path(hf_clip, tiny_coco, make_stage_workdir, tmp_path):
  workdir = make_stage_workdir(tmp_path / "base")
  out = tmp_path / "fid"
  args = _script_args(tiny_coco, workdir, out, hf_clip[1])
  proc = subprocess.run(args, env=_script_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  c = json.loads((out / "fid_vs_clip_score.json").read_text())
  assert [p["guidance_scale"] for p in c["points"]] == [1.0, 3.0]
  assert c["clip_backbone"] == "ViT(width=36,layers=2)/6@30px (tiny-clip)"
  assert c["clip_score_scale"] == 100.0 and "max(cos" in c["clip_score_formula"]
  record = json.loads((out / "fid.json").read_text())
  for run, point in zip(record["runs"], c["points"]):
    assert run["clip_score"] == point["clip_score"] and run["fid"] == point["fid"]
    assert run["clip_backbone"] == c["clip_backbone"] and run["clip_score_pairs"] == 4
    assert run == json.loads((out / run["name"] / "result.json").read_text())
  assert record["fid_vs_clip_score"] == c
  assert (out / "fid_vs_clip_score.md").read_text().startswith("CLIP score: mean_i 100 *")
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(summary["clip_score"]) == {"base_w1", "base_w3"}
  assert summary["clip_backbone"] == c["clip_backbone"] and summary["clip_score_scale"] == 100
  print(proc.stdout[-800:])


def test_fixed_resolution_clip_gets_resized_images():
  class Small:  # like the project's noise-aware CLIP: a fixed input size, no resizing
    resolution = 8

    def encode_images(self, images):
      assert images.shape[1:] == (8, 8, 3), images.shape
      return np.asarray(images, np.float64).mean(axis=(1, 2))

    def encode_texts(self, texts):
      return np.ones((len(texts), 3))

  res = clip_score_lib.clip_score(Small(), _images(3, size=20), ["a", "b", "c"], batch_size=2)
  assert res.per_sample.shape == (3,) and res.backbone == "Small"


@pytest.mark.slow  # trains the shapes CLIP 3 steps (configs/shapes.py:stage=clip,runlocal)
def test_shapes_clip_workdir(tmp_path):
  from imagen_jax.train import loop  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("shapes_cfg", ROOT / "configs" / "shapes.py")
  cfg_mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cfg_mod)
  workdir = tmp_path / "clip_run"
  loop.train_and_evaluate(cfg_mod.get_config("stage=clip,runlocal"), str(workdir))
  scorer = clip_score_lib.ClipScorer.from_path(str(workdir))
  assert "step 3" in scorer.backbone and "(clip_run)" in scorer.backbone
  rng = np.random.default_rng(0)
  scenes = [shapes.sample_scene(rng, "train", max_objects=1) for _ in range(4)]
  images = np.stack([shapes.render(s, 32) for s in scenes])  # resized to the CLIP's 16
  res = scorer.score(images, [shapes.caption(s) for s in scenes])
  assert 0 <= res.mean <= 100 and res.as_dict()["clip_backbone"] == scorer.backbone
  with pytest.raises(ValueError, match="longer than the text tower"):
    scorer.score(images[:1], ["a" * 200])
