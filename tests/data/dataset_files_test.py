"""Dataset files with bad content: caption files that are not UTF-8, broken JSONL/CSV
manifests and COCO annotations (errors name the file and the true line), and paths that
escape the dataset root (refused and counted, unless config.input.allow_outside_root)."""

import io
import json
import logging
import tarfile

import pytest
from PIL import Image

from imagen_jax.data import input_pipeline
from imagen_jax.data.prepare import convert
from imagen_jax.data.prepare import readers

_KW = dict(seed=0, process_index=0, process_count=1, devices_per_process=1)


def _image(path, colour=(200, 20, 20)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (12, 10), colour).save(path)


def _captions(cfg, **kw):
  it = input_pipeline.create_input_iterator(
      {"num_epochs": 1, "shuffle": False, **cfg}, global_batch_size=1, resolution=8, **_KW, **kw
  )
  return [str(b["caption"][0]) for b in it], it


# -- Caption files ----------------------------------------------------------------------


def _folder_with_bad_caption(tmp_path):
  root = tmp_path / "imgs"
  for name in ("a", "b", "c"):
    _image(root / f"{name}.png")
    (root / f"{name}.txt").write_text(f"caption {name}")
  (root / "b.txt").write_bytes(b"caf\xe9 latin-1, not UTF-8\n")
  return root


def test_bad_utf8_caption_skipped_and_counted_by_default(tmp_path, caplog):
  root = _folder_with_bad_caption(tmp_path)
  with caplog.at_level(logging.WARNING):
    got, it = _captions({"dataset": "folder", "path": str(root)})
  assert got == ["caption a", "caption c"]
  assert it.num_skipped == 1
  warned = " ".join(r.getMessage() for r in caplog.records)
  assert "b.txt" in warned and "UTF-8" in warned, warned


def test_bad_utf8_caption_is_an_error_naming_the_file_under_error_policy(tmp_path):
  root = _folder_with_bad_caption(tmp_path)
  with pytest.raises(ValueError, match=r"b\.txt.*not valid UTF-8.*byte 3"):
    input_pipeline.make_source({"dataset": "folder", "path": str(root), "bad_caption": "error"}, 8)
  with pytest.raises(ValueError, match=r"bad_caption='maybe'"):
    input_pipeline.make_source({"dataset": "folder", "path": str(root), "bad_caption": "maybe"}, 8)


def test_prepare_counts_a_bad_caption_file(tmp_path):
  root = _folder_with_bad_caption(tmp_path)
  s = convert.prepare(
      source="folder",
      path=str(root),
      name="bad_caps",
      output_dir=str(tmp_path / "tfds"),
      num_workers=0,
      log=lambda *_: None,
  )
  assert s.written == 2 and dict(s.skipped) == {"bad caption": 1}


# -- Manifests and annotations: the file and the true line --------------------------------


def test_jsonl_error_names_the_file_and_the_true_line(tmp_path):
  root = tmp_path / "imgs"
  _image(root / "a.png")
  manifest = tmp_path / "m.jsonl"
  manifest.write_text(
      '{"image": "a.png", "caption": "x"}\n\n   \n{"image": "a.png", "caption": oops}\n'
  )
  with pytest.raises(ValueError, match=r"m\.jsonl:4: not valid JSON"):
    input_pipeline.make_source(
        {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
    )
  manifest.write_bytes(
      b'{"image": "a.png", "caption": "x"}\n\n' b'{"image": "a.png", "caption": "\xff"}\n'
  )
  with pytest.raises(ValueError, match=r"m\.jsonl:3: not valid UTF-8"):
    input_pipeline.make_source(
        {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
    )
  manifest.write_text('{"image": "a.png", "caption": "x"}\n["a.png", "x"]\n')
  with pytest.raises(ValueError, match=r"m\.jsonl:2: .*JSON object"):
    input_pipeline.make_source(
        {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
    )
  manifest.write_text('{"image": "a.png", "caption": 7}\n')
  with pytest.raises(ValueError, match=r"m\.jsonl:1: .*caption"):
    input_pipeline.make_source(
        {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
    )


def test_csv_error_names_the_true_line_after_a_multiline_caption(tmp_path):
  root = tmp_path / "imgs"
  _image(root / "a.png")
  manifest = tmp_path / "m.csv"
  manifest.write_text('image,caption\na.png,"two\nlines"\na.png,fine\n,no image here\n')
  with pytest.raises(ValueError, match=r"m\.csv:5: no 'image'"):
    input_pipeline.make_source(
        {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
    )
  manifest.write_text('image,caption\na.png,"two\nlines"\n')
  source = input_pipeline.make_source(
      {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
  )
  assert source.captions(0) == ["two\nlines"]


def test_coco_json_errors_name_the_file_and_line_or_entry(tmp_path):
  root = tmp_path / "imgs"
  _image(root / "a.png")
  ann = tmp_path / "captions.json"
  ann.write_text('{"images": [\n  {"id": 1, "file_name": "a.png"},\n  oops\n]}\n')
  cfg = {"dataset": "coco_json", "path": str(root), "annotations": str(ann)}
  with pytest.raises(ValueError, match=r"captions\.json:3: not valid JSON"):
    input_pipeline.make_source(cfg, 8)
  ann.write_text(
      json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2}], "annotations": []})
  )
  with pytest.raises(ValueError, match=r"captions\.json: images\[1\] has no 'file_name'"):
    input_pipeline.make_source(cfg, 8)
  ann.write_text(
      json.dumps(
          {
              "images": [{"id": 1, "file_name": "a.png"}],
              "annotations": [{"image_id": 1, "caption": None}],
          }
      )
  )
  with pytest.raises(
      ValueError, match=r"captions\.json: annotations\[0\].*'caption' must be a str"
  ):
    input_pipeline.make_source(cfg, 8)


# -- Paths outside the dataset root -----------------------------------------------------


def _outside_layout(tmp_path):
  root = tmp_path / "data" / "imgs"
  _image(root / "a.png")
  _image(tmp_path / "outside" / "secret.png", (0, 0, 255))
  escapes = ["../../outside/secret.png", str(tmp_path / "outside" / "secret.png")]
  return root, escapes


def test_coco_file_names_outside_the_root_are_refused_and_counted(tmp_path, caplog):
  root, escapes = _outside_layout(tmp_path)
  ann = tmp_path / "captions.json"
  images = [{"id": i + 1, "file_name": f} for i, f in enumerate(["a.png", *escapes])]
  ann.write_text(
      json.dumps(
          {
              "images": images,
              "annotations": [{"image_id": i + 1, "caption": f"cap {i}"} for i in range(3)],
          }
      )
  )
  cfg = {"dataset": "coco_json", "path": str(root), "annotations": str(ann)}
  with caplog.at_level(logging.WARNING):
    got, it = _captions(cfg)
  assert got == ["cap 0"] and it.num_skipped == 2
  warned = " ".join(r.getMessage() for r in caplog.records)
  assert "outside" in warned and "allow_outside_root" in warned, warned
  got, it = _captions({**cfg, "allow_outside_root": True})
  assert got == ["cap 0", "cap 1", "cap 2"] and it.num_skipped == 0


def test_manifest_paths_outside_the_root_are_refused_and_counted(tmp_path):
  root, escapes = _outside_layout(tmp_path)
  manifest = tmp_path / "m.jsonl"
  manifest.write_text(
      "".join(
          json.dumps({"image": f, "caption": f"cap {i}"}) + "\n"
          for i, f in enumerate(["a.png", *escapes, "x/../a.png"])
      )
  )
  cfg = {"dataset": "folder", "path": str(root), "manifest": str(manifest)}
  got, it = _captions(cfg)
  assert got == ["cap 0"] and it.num_skipped == 3
  assert input_pipeline.make_source(cfg, 8).captions(1) == []


def test_prepare_readers_refuse_and_count_outside_paths(tmp_path):
  root, escapes = _outside_layout(tmp_path)
  ann = tmp_path / "captions.json"
  ann.write_text(
      json.dumps(
          {
              "images": [{"id": i + 1, "file_name": f} for i, f in enumerate(["a.png", *escapes])],
              "annotations": [{"image_id": i + 1, "caption": f"cap {i}"} for i in range(3)],
          }
      )
  )
  s = convert.prepare(
      source="coco_json",
      annotations=str(ann),
      images=str(root),
      name="escape",
      output_dir=str(tmp_path / "tfds"),
      num_workers=0,
      log=lambda *_: None,
  )
  assert s.written == 1 and dict(s.skipped) == {"outside root": 2}


def _add(tar, name, data):
  member = tarfile.TarInfo(name)
  member.size = len(data)
  tar.addfile(member, io.BytesIO(data))


def test_webdataset_members_with_unsafe_names_are_skipped(tmp_path):
  png = io.BytesIO()
  Image.new("RGB", (12, 10)).save(png, format="PNG")
  tar_path = tmp_path / "00000.tar"
  with tarfile.open(tar_path, "w") as tar:
    for key in ("good", "../../evil", "/abs/evil", "sub/../../evil2"):
      _add(tar, f"{key}.png", png.getvalue())
      _add(tar, f"{key}.txt", f"caption {key}".encode())
  items = list(readers.WebDatasetReader(str(tar_path)).items([str(tar_path)]))
  assert [(i.key, i.skip and i.skip[0]) for i in items] == [
      ("00000/good", None),
      ("00000/../../evil", "unsafe member name"),
      ("00000//abs/evil", "unsafe member name"),
      ("00000/sub/../../evil2", "unsafe member name"),
  ]
  s = convert.prepare(
      source="webdataset",
      path=str(tar_path),
      name="tarsafe",
      output_dir=str(tmp_path / "tfds"),
      num_workers=0,
      log=lambda *_: None,
  )
  assert s.written == 1 and dict(s.skipped) == {"unsafe member name": 3}
  assert not (tmp_path.parent / "evil.png").exists()
