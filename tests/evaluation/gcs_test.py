"""The evaluation harness on `gs://` paths, against a real GCS API server (fake-gcs-server):
FID statistics, the COCO FID run directory (resumed from the bucket), Inception weights."""

import io

import jax
import numpy as np
import pytest

from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import fid
from imagen_jax.evaluation import inception
from imagen_jax.storage import paths


def _names(root):
  return sorted(p.name for p in paths.path(root).iterdir())


def test_gs_through_gcsfs_after_a_local_path(gcs_bucket, tmp_path, monkeypatch):
  """etils picks TensorFlow (which ignores the emulator) at the first path it sees unless
  told otherwise; a local path made first must not decide it for gs://."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  from etils.epath import gpath  # pylint: disable=import-outside-toplevel

  monkeypatch.delenv("EPATH_USE_TF", raising=False)
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  assert not epath.Path(tmp_path / "x").exists()  # the first path of the "process"
  paths.write_atomic(f"{gcs_bucket}/after_local.txt", "ok")
  assert paths.path(f"{gcs_bucket}/after_local.txt").read_text() == "ok"


def test_statistics_round_trip_through_a_bucket(gcs_bucket):
  rng = np.random.default_rng(0)
  mu, sigma = rng.normal(size=3), np.eye(3)
  path = f"{gcs_bucket}/stats/ref.npz"
  fid.save_statistics(path, mu, sigma, 5, {"hash": "abc"})
  mu2, sigma2, n, meta = fid.load_statistics(path)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  assert n == 5 and meta == {"hash": "abc"}
  assert _names(f"{gcs_bucket}/stats") == ["ref.npz"]  # one upload, no temporary object
  with pytest.raises(FileNotFoundError, match="no FID statistics"):
    fid.load_statistics(f"{gcs_bucket}/stats/missing.npz")


def test_harness_in_a_bucket_resumes_from_its_shards(
    gcs_bucket, tiny_coco, small_extractor, make_sample_fn, tmp_path
):
  def harness(out, cache=None):
    protocol = coco_fid.Protocol(
        num_samples=12, seed=5, resolution=64, shard_size=4, read_threads=2
    )
    return coco_fid.CocoFid(
        coco_fid.open_source(*tiny_coco), small_extractor, out, protocol, cache_dir=cache
    )

  out, cache = f"{gcs_bucket}/fid", f"{gcs_bucket}/refcache"
  first_fn = make_sample_fn()
  first = harness(out, cache).evaluate(first_fn, "w1")
  assert len(first_fn.calls) == 3
  assert _names(out) == ["captions.json", "w1"]
  assert _names(f"{out}/w1") == ["result.json", "shards"]
  assert _names(f"{out}/w1/shards") == [f"shard-{k:05d}.npz" for k in range(3)]
  key = harness(out, cache).reference_key()
  assert _names(cache) == [f"coco_ref_{key}.npz", f"coco_ref_{key}_features.npy"]
  assert coco_fid.read_json(f"{out}/w1/result.json")["fid"] == first["fid"]

  again_fn = make_sample_fn()
  again = harness(out, cache).evaluate(again_fn, "w1")
  assert again_fn.calls == []  # every shard read back from the bucket
  assert again["counts"]["shards_reused"] == 3 and again["counts"]["shards_generated_now"] == 0
  assert again["fid"] == first["fid"]

  local = harness(str(tmp_path / "local")).evaluate(make_sample_fn(), "w1")
  assert local["fid"] == pytest.approx(first["fid"], rel=1e-9)


def test_inception_weights_from_a_bucket(gcs_bucket, random_state_dict, tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
  want = inception.init_params(0)
  buf = io.BytesIO()
  np.savez(buf, **random_state_dict)
  npz = f"{gcs_bucket}/weights/pt_inception-random.npz"
  paths.path(npz).write_bytes(buf.getvalue())
  jax.tree_util.tree_map(np.testing.assert_array_equal, inception.load_params(npz), want)

  torch = pytest.importorskip("torch")
  local_pth = tmp_path / "w.pth"
  torch.save({k: torch.from_numpy(v) for k, v in random_state_dict.items()}, local_pth)
  pth = f"{gcs_bucket}/weights/pt_inception-random.pth"
  paths.path(pth).write_bytes(local_pth.read_bytes())
  jax.tree_util.tree_map(np.testing.assert_array_equal, inception.load_params(pth), want)

  with pytest.raises(inception.WeightsNotFoundError, match="missing.pth"):
    inception.load_params(f"{gcs_bucket}/weights/missing.pth")


def test_coco_reference_read_from_a_bucket(gcs_bucket, tiny_coco):
  """eval_fid's COCO source (captions json + val2014/) straight from gs://, record for record
  the same as from the local download (6 of its images uploaded: the others are unreadable
  there, which the FID protocol treats as an error, not a skip)."""
  import pathlib  # pylint: disable=import-outside-toplevel

  ann, image_dir = tiny_coco
  remote_ann = f"{gcs_bucket}/coco/annotations/captions_val2014.json"
  paths.path(remote_ann).write_bytes(pathlib.Path(ann).read_bytes())
  for name in sorted(p.name for p in pathlib.Path(image_dir).iterdir())[:6]:
    paths.path(f"{gcs_bucket}/coco/val2014/{name}").write_bytes(
        (pathlib.Path(image_dir) / name).read_bytes()
    )
  local = coco_fid.open_source(ann, image_dir)
  remote = coco_fid.open_source(remote_ann, f"{gcs_bucket}/coco/val2014")
  assert remote.num_records == local.num_records
  read = 0
  for i in range(remote.num_records):
    try:
      image, caption = coco_fid.read_record(remote, i, 0, 32)
    except ValueError:
      continue
    want_image, want_caption = coco_fid.read_record(local, i, 0, 32)
    np.testing.assert_array_equal(image, want_image)
    assert caption == want_caption
    read += 1
  assert read == 6
  with pytest.raises(FileNotFoundError, match="no-such"):
    coco_fid.open_source(f"{gcs_bucket}/no-such.json", f"{gcs_bucket}/coco/val2014")
