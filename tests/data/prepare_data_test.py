"""scripts/prepare_data.py on real formats (COCO captions json + JPEGs, img2dataset
webdataset tars, a captioned folder): parallel shards, resume, corrupt inputs counted, then
read back by tfds.data_source and the project's input pipeline with no field flags, without
TensorFlow, from gs:// (fake-gcs-server), and trained on."""

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import input_pipeline
from imagen_jax.data import sources
from imagen_jax.data import preprocess
from imagen_jax.data import shapes
from imagen_jax.data.prepare import convert
from imagen_jax.data.prepare import images
from imagen_jax.data.prepare import readers

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_data.py"
_KW = dict(seed=0, process_index=0, process_count=1, devices_per_process=1)
# Makes TensorFlow unimportable, as in an install without it (find_spec -> None, so
# TFDS and etils see it as absent; sys.modules["tensorflow"] = None would not be).
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


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _encode(array, fmt="JPEG", **kw):
  out = io.BytesIO()
  img = array if isinstance(array, Image.Image) else Image.fromarray(array)
  img.save(out, format=fmt, **kw)
  return out.getvalue()


def _scene(i, size=40):
  scene = shapes.sample_scene(i)
  return shapes.render(scene, size), shapes.caption(scene)


def _coco(tmp_path):
  """7 images listed, 2-3 captions each; #3 is a truncated JPEG, #5 is missing."""
  img_dir = tmp_path / "train2014"
  img_dir.mkdir()
  info = {"info": {"year": 2014}, "images": [], "annotations": []}
  expected = {}
  for i in range(7):
    pixels, text = _scene(i)
    name = f"COCO_train2014_{i:012d}.jpg"
    info["images"].append({"id": 1000 + i, "file_name": name, "width": 40, "height": 40})
    caps = [f"{text} ({j})" for j in range(2 + i % 2)]
    for j, c in enumerate(caps):
      info["annotations"].append({"id": 10 * i + j, "image_id": 1000 + i, "caption": c})
    data = _encode(pixels, quality=90)
    if i == 3:
      data = data[: len(data) // 2]
    if i != 5:
      (img_dir / name).write_bytes(data)
    if i not in (3, 5):
      expected[name] = (data, caps)
  ann = tmp_path / "captions_train2014.json"
  ann.write_text(json.dumps(info))
  return ann, img_dir, expected


def _add(tar, name, data):
  member = tarfile.TarInfo(name)
  member.size = len(data)
  tar.addfile(member, io.BytesIO(data))


def _webdataset(folder):
  """2 img2dataset shards: 6 good samples (one captioned by .json), one corrupt JPEG,
  one image without a caption."""
  folder.mkdir(parents=True, exist_ok=True)
  expected = {}
  for t in range(2):
    with tarfile.open(folder / f"{t:05d}.tar", "w") as tar:
      for k in range(4):
        key = f"{t:05d}{k:04d}"
        pixels, text = _scene(100 + 10 * t + k)
        data = _encode(pixels)
        if t == 1 and k == 1:
          data = data[:40]  # corrupt
        _add(tar, f"{key}.jpg", data)
        if t == 1 and k == 2:
          continue  # no caption
        if t == 0 and k == 3:
          _add(tar, f"{key}.json", json.dumps({"caption": text, "url": "x"}).encode())
        else:
          _add(tar, f"{key}.txt", text.encode())
          _add(tar, f"{key}.json", json.dumps({"url": "x"}).encode())
        if not (t == 1 and k == 1):
          expected[f"{t:05d}/{key}"] = (data, [text])
  return expected


def _run(*args, timeout=120):
  return subprocess.Popen(
      [sys.executable, str(SCRIPT), *map(str, args)],
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=ROOT,
  )


def _finish(proc):
  out, _ = proc.communicate(timeout=180)
  assert proc.returncode == 0, out
  return out


def _this_run(out):
  m = re.search(r"this run: (\d+) written, (\d+) skipped(?: \(([^)]*)\))?", out)
  assert m, out
  return int(m[1]), int(m[2]), m[3] or ""


def _read_all(name, data_dir, split="train"):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  ds = tfds.data_source(name, split=split, data_dir=str(data_dir))
  return [ds[i] for i in range(len(ds))]


def _check_roundtrip(records, expected):
  assert sorted(r["key"].decode() for r in records) == sorted(expected)
  for r in records:
    data, caps = expected[r["key"].decode()]
    np.testing.assert_array_equal(r["image"], preprocess.decode_image(data))
    assert [c.decode() for c in r["caption"]] == caps


def _captions_through_pipeline(config, n, resolution=16, skipped=0):
  it = input_pipeline.create_input_iterator(
      dict(config, num_epochs=1), global_batch_size=1, resolution=resolution, **_KW
  )
  batches = list(it)
  assert (len(batches), it.num_skipped) == (n, skipped)
  for b in batches:
    assert b["image"].shape == (1, resolution, resolution, 3)
    assert b["image"].dtype == np.uint8
  return [b["caption"][0] for b in batches]


def test_coco_json_two_processes_resume_then_read_back(tmp_path):
  ann, img_dir, expected = _coco(tmp_path)
  out_dir = tmp_path / "tfds"
  args = [
      "--source",
      "coco_json",
      "--annotations",
      ann,
      "--images",
      img_dir,
      "--name",
      "coco_test",
      "--output_dir",
      out_dir,
      "--num_shards",
      2,
  ]
  outs = [_finish(p) for p in [_run(*args, "--shard_index", i) for i in range(2)]]
  runs = [_this_run(o) for o in outs]
  # 7 images in 2 shards of 3 and 4: the second holds the truncated #3 and missing #5
  assert runs == [(3, 0, ""), (2, 2, "corrupt image: 1, missing file: 1")], outs
  assert any("split train: complete, 5 examples in 2 shards" in o for o in outs), outs
  rerun = _finish(_run(*args))
  assert rerun.count("already done") == 2 and _this_run(rerun) == (0, 0, ""), rerun
  done = json.loads(
      (out_dir / "coco_test/1.0.0/_prepare/train/00001-of-00002.done.json").read_text()
  )
  assert done["skipped"] == {"corrupt image": 1, "missing file": 1}
  assert {e["reason"] for e in done["skipped_examples"]} == {"corrupt image", "missing file"}
  assert "COCO_train2014_000000000005.jpg" in json.dumps(done["skipped_examples"])

  records = _read_all("coco_test", out_dir)
  _check_roundtrip(records, expected)  # the original JPEG bytes: identical pixels
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder_from_directory(str(out_dir / "coco_test/1.0.0"))
  assert builder.info.splits["train"].shard_lengths == [3, 2]
  seen = _captions_through_pipeline({"dataset": "tfds:coco_test", "data_dir": str(out_dir)}, n=5)
  assert all(any(c in caps for _, caps in expected.values()) for c in seen)

  # The text cache's coverage check lists captions from the shards' captions files, in
  # record order, without reading a record (the images).
  source = sources.TfdsSource("coco_test", data_dir=str(out_dir))
  from_records = [[c.decode() for c in r["caption"]] for r in records]
  source._ds = None  # pylint: disable=protected-access  # any record read would fail now
  assert [source.captions(i) for i in range(source.num_records)] == from_records


def test_webdataset_and_folder_sources_and_a_second_split(tmp_path):
  expected = _webdataset(tmp_path / "wds")
  out_dir = tmp_path / "tfds"
  logs = []
  s = convert.prepare(
      source="webdataset",
      path=str(tmp_path / "wds" / "*.tar"),
      name="wds_test",
      output_dir=str(out_dir),
      num_shards=2,
      log=logs.append,
  )
  assert (s.written, dict(s.skipped)) == (6, {"corrupt image": 1, "no caption": 1}), logs
  _check_roundtrip(_read_all("wds_test", out_dir), expected)
  # A folder with sidecar .txt files as a second split of the same dataset.
  folder = tmp_path / "imgs"
  (folder / "sub").mkdir(parents=True)
  want = {}
  for i, (sub, mode) in enumerate([("", "RGB"), ("sub", "L"), ("sub", "RGBA")]):
    pixels, text = _scene(200 + i, size=24)
    img = Image.fromarray(pixels).convert(mode)
    rel = f"{sub}/im{i}.png".lstrip("/")
    img.save(folder / rel)
    (folder / rel).with_suffix(".txt").write_text(f"{text}\n")
    want[rel] = (np.asarray(img.convert("RGB")) if mode != "RGBA" else None, [text])
  s = convert.prepare(
      source="folder",
      path=str(folder),
      name="wds_test",
      output_dir=str(out_dir),
      split="validation",
      log=logs.append,
  )
  assert (s.written, s.reencoded, sum(s.skipped.values())) == (3, 2, 0), logs
  assert sorted(s.complete_splits) == ["train", "validation"]
  val = {r["key"].decode(): r for r in _read_all("wds_test", out_dir, "validation")}
  assert sorted(val) == sorted(want)
  for rel, (pixels, caps) in want.items():
    assert val[rel]["image"].shape == (24, 24, 3)  # grey and alpha stored as RGB
    if pixels is not None:
      np.testing.assert_array_equal(val[rel]["image"], pixels)
    assert [c.decode() for c in val[rel]["caption"]] == caps
  assert len(_read_all("wds_test", out_dir, "train")) == 6  # the first split kept
  with pytest.raises(ValueError, match="--num_shards 2"):
    convert.prepare(
        source="webdataset",
        path=str(tmp_path / "wds"),
        name="wds_test",
        output_dir=str(out_dir),
        num_shards=1,
        log=logs.append,
    )


def test_images_stored_as_is_or_reencoded():
  pixels, _ = _scene(1, size=64)
  jpeg = _encode(pixels)
  assert images.for_storage(jpeg, "a") == (jpeg, False)  # byte for byte
  png = _encode(pixels, "PNG")
  assert images.for_storage(png, "b") == (png, False)
  for data, fmt in [
      (_encode(pixels[..., 0], "JPEG"), "JPEG"),  # grey
      (_encode(Image.fromarray(pixels).convert("CMYK")), "JPEG"),
      (_encode(np.dstack([pixels, pixels[..., :1]]), "PNG"), "PNG"),  # alpha
      (_encode(pixels, "WEBP", quality=90), "JPEG"),
  ]:
    stored, reencoded = images.for_storage(data, "c")
    with Image.open(io.BytesIO(stored)) as img:
      assert reencoded and (img.format, img.mode, img.size) == (fmt, "RGB", (64, 64))
  stored, reencoded = images.for_storage(jpeg, "d", max_side=16)
  assert reencoded and Image.open(io.BytesIO(stored)).size == (16, 16)
  for bad in (jpeg[: len(jpeg) // 2], b"not an image", png[:100]):
    with pytest.raises(preprocess.BadExampleError, match="cannot decode"):
      images.for_storage(bad, "e")


def test_dataset_paths_must_stay_inside_their_root(tmp_path):
  (tmp_path / "imgs").mkdir()
  for bad in ("../secret.jpg", "/etc/passwd", "a/../../b.jpg"):
    ann = tmp_path / "captions.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": bad}],
                "annotations": [{"id": 1, "image_id": 1, "caption": "c"}],
            }
        )
    )
    reader = readers.open_reader("coco_json", annotations=str(ann), images=str(tmp_path / "imgs"))
    [item] = list(reader.items(reader.units))  # refused: a bad record, never loaded
    assert item.load is None and item.skip[0] == "outside root", item
    assert "must be relative to the dataset root" in item.skip[1], item
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": bad, "caption": "c"}) + "\n")
    source = input_pipeline.make_source(
        {"dataset": "folder", "path": str(tmp_path / "imgs"), "manifest": str(manifest)}, 8
    )
    with pytest.raises(preprocess.BadExampleError, match=re.escape(repr(bad))):
      source.read(0, np.random.default_rng(0))


def test_reading_and_preparing_without_tensorflow(tmp_path):
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(3):
    pixels, text = _scene(300 + i, size=20)
    (folder / f"{i}.jpg").write_bytes(_encode(pixels))
    (folder / f"{i}.txt").write_text(text)
  code = NO_TF + f"""
import importlib.util
assert importlib.util.find_spec("tensorflow") is None
from imagen_jax.data.prepare import convert
s = convert.prepare(source="folder", path={str(folder)!r}, name="no_tf",
                    output_dir={str(tmp_path / "tfds")!r}, num_shards=2)
import tensorflow_datasets as tfds
ds = tfds.data_source("no_tf", split="train", data_dir={str(tmp_path / "tfds")!r})
from imagen_jax.data import input_pipeline
from imagen_jax.data import sources
it = input_pipeline.create_input_iterator(
    {{"dataset": "tfds:no_tf", "data_dir": {str(tmp_path / "tfds")!r}, "num_epochs": 1}},
    global_batch_size=1, resolution=8, seed=0, process_index=0, process_count=1,
    devices_per_process=1)
n = sum(1 for _ in it)
print("RESULT", s.written, len(ds), n, "tensorflow" in sys.modules)
"""
  proc = subprocess.run(
      [sys.executable, "-c", code],
      env=_env(),
      capture_output=True,
      text=True,
      timeout=180,
      cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "RESULT 3 3 3 False" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def _upload(local, remote):
  import gcsfs  # pylint: disable=import-outside-toplevel

  gcsfs.GCSFileSystem().put(f"{local}/", remote, recursive=True)


@pytest.fixture
def gcs(gcs_bucket, monkeypatch):
  # array_record reads gs:// with its own (google-cloud-cpp) client, which finds an
  # emulator through CLOUD_STORAGE_EMULATOR_ENDPOINT, not STORAGE_EMULATOR_HOST.
  monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", os.environ["STORAGE_EMULATOR_HOST"])
  return gcs_bucket


_READ_BACK = """
import hashlib, json, sys
from imagen_jax.storage import paths
paths.prefer_gcsfs()  # else etils serves gs:// by tf.io.gfile (TF is installed here),
import tensorflow_datasets as tfds  # which cannot reach the emulator
from imagen_jax.data import input_pipeline
from imagen_jax.data import sources
name, data_dir, coco, folder = sys.argv[1:]
ds = tfds.data_source(name, split="train", data_dir=data_dir)
records = {r["key"].decode(): [hashlib.sha256(r["image"].tobytes()).hexdigest(),
                               [c.decode() for c in r["caption"]]]
           for r in (ds[i] for i in range(len(ds)))}
def captions(cfg):
  it = input_pipeline.create_input_iterator(dict(cfg, num_epochs=1), global_batch_size=1,
      resolution=16, seed=0, process_index=0, process_count=1, devices_per_process=1)
  caps = [b["caption"][0] for b in it]
  return caps, it.num_skipped
print("RESULT", json.dumps({
    "records": records,
    "tfds": captions({"dataset": "tfds:" + name, "data_dir": data_dir}),
    "coco": captions({"dataset": "coco_json", "path": coco + "/train2014",
                      "annotations": coco + "/captions_train2014.json"}),
    "folder": captions({"dataset": "folder", "path": folder})}))
"""


def test_gcs_prepare_and_read_back_in_the_input_pipeline(gcs, tmp_path):
  """Like a user on a TPU VM: tars, COCO files and a folder in a bucket; prepare_data.py
  into the bucket; the input pipeline reads the prepared dataset, COCO json and the folder
  from gs:// (fresh processes, as the user runs them)."""
  expected = _webdataset(tmp_path / "wds")
  _upload(tmp_path / "wds", f"{gcs}/wds")
  (tmp_path / "coco_src").mkdir()
  _, _, coco_expected = _coco(tmp_path / "coco_src")
  _upload(tmp_path / "coco_src", f"{gcs}/coco")
  folder = tmp_path / "imgs"
  (folder / "sub").mkdir(parents=True)
  texts = []
  for i, rel in enumerate(["b.jpg", "sub/a.jpg"]):
    pixels, text = _scene(400 + i)
    (folder / rel).write_bytes(_encode(pixels))
    (folder / rel).with_suffix(".txt").write_text(text)
    texts.append(text)
  _upload(folder, f"{gcs}/imgs")

  out_dir = f"{gcs}/tfds"
  args = [
      "--source",
      "webdataset",
      "--path",
      f"{gcs}/wds/*.tar",
      "--name",
      "gcs_test",
      "--output_dir",
      out_dir,
      "--num_shards",
      2,
  ]
  out = _finish(_run(*args))
  assert _this_run(out) == (6, 2, "corrupt image: 1, no caption: 1"), out
  again = _finish(_run(*args))
  assert again.count("already done") == 2, again

  proc = subprocess.run(
      [sys.executable, "-c", _READ_BACK, "gcs_test", out_dir, f"{gcs}/coco", f"{gcs}/imgs"],
      env=_env(),
      capture_output=True,
      text=True,
      timeout=180,
      cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.split("RESULT ", 1)[1])
  import hashlib  # pylint: disable=import-outside-toplevel

  assert got["records"] == {
      k: [hashlib.sha256(preprocess.decode_image(d).tobytes()).hexdigest(), c]
      for k, (d, c) in expected.items()
  }
  assert sorted(got["tfds"][0]) == sorted(c for _, [c] in expected.values())
  assert got["tfds"][1] == 0
  caps, skipped = got["coco"]
  assert (len(caps), skipped) == (5, 2)  # the truncated and the missing image skipped
  assert all(any(c in cs for _, cs in coco_expected.values()) for c in caps)
  assert sorted(got["folder"][0]) == sorted(texts) and got["folder"][1] == 0


@pytest.mark.slow  # compiles the tiny base stage in a subprocess: minutes on a shared CPU
def test_train_on_a_prepared_dataset_with_no_field_flags(tmp_path):
  _webdataset(tmp_path / "wds")
  out_dir = tmp_path / "tfds"
  convert.prepare(
      source="webdataset",
      path=str(tmp_path / "wds"),
      name="train_test",
      output_dir=str(out_dir),
      num_shards=2,
      log=lambda *_: None,
  )
  workdir = tmp_path / "work"
  proc = subprocess.run(
      [
          sys.executable,
          str(ROOT / "scripts" / "train.py"),
          f"--config={ROOT / 'configs' / 'base64.py'}:variant=tiny,runlocal",
          "--config.input.dataset=tfds:train_test",
          f"--config.input.data_dir={out_dir}",
          "--config.total_steps=2",
          f"--workdir={workdir}",
      ],
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
      cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["step"] == 2 and np.isfinite(final["loss"]), final


def test_a_tar_cut_short_counts_the_sample_it_cut(tmp_path):
  """A truncated webdataset shard (an interrupted download): the whole samples before the
  break are kept, the sample being read is counted as skipped, and so is the rest."""
  good, text = _scene(7)
  path = tmp_path / "00000.tar"
  with tarfile.open(path, "w") as tar:
    _add(tar, "a.jpg", _encode(good))
    _add(tar, "a.txt", text.encode())
    _add(tar, "b.txt", b"a caption read before the break")
    _add(tar, "b.jpg", _encode(good) * 40)  # large: the cut falls inside it
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  items = list(readers.tar_items(str(path)))
  assert [(i.key, i.skip[0] if i.skip else "ok") for i in items] == [
      ("00000/a", "ok"),
      ("00000/b", "corrupt tar"),
      ("00000/<tar>", "corrupt tar"),
  ]
  assert items[0].captions == (text,)
