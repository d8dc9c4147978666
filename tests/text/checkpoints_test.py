"""Checkpoint import: t5x layouts, sharded safetensors, .bin, meshes, bad input."""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
from jax.sharding import Mesh
import numpy as np
import pytest

from imagen_jax import text

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _t5x_flat(model, kernels_3d=False):
  """The reference model's weights under t5x's names (written independently
  of imagen_jax's converter), plus decoder/optimizer entries to be ignored."""
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  cfg = model.config
  h, dkv, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  flat = {
      "token_embedder/embedding": sd["shared.weight"],
      "encoder/relpos_bias/rel_embedding": sd[
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
      ].T,
      "encoder/encoder_norm/scale": sd["encoder.final_layer_norm.weight"],
      "decoder/layers_0/self_attention/query/kernel": np.ones((d, h * dkv), np.float32),
  }
  for i in range(cfg.num_layers):
    blk, p = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    flat[f"{p}/pre_attention_layer_norm/scale"] = sd[f"{blk}.0.layer_norm.weight"]
    flat[f"{p}/pre_mlp_layer_norm/scale"] = sd[f"{blk}.1.layer_norm.weight"]
    for ours, theirs in [("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")]:
      w = sd[f"{blk}.0.SelfAttention.{theirs}.weight"].T
      if kernels_3d:
        w = w.reshape((h, dkv, d) if ours == "out" else (d, h, dkv))
      flat[f"{p}/attention/{ours}/kernel"] = w
    for w in ("wi", "wi_0", "wi_1", "wo"):
      key = f"{blk}.1.DenseReluDense.{w}.weight"
      if key in sd:
        flat[f"{p}/mlp/{w}/kernel"] = sd[key].T
  return flat


def _nest(flat):
  tree = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _write_legacy_t5x(ckpt_dir: pathlib.Path, flat: dict):
  """t5x Checkpointer VERSION 3 layout: msgpack + relative zarr TensorStores.

  Norm scales are inlined in the msgpack (t5x does that for unpartitioned
  params); everything else goes to a zarr array 'target.<name with dots>'.
  """
  ts = pytest.importorskip("tensorstore")
  from flax import serialization  # pylint: disable=import-outside-toplevel

  ckpt_dir.mkdir(parents=True)
  target = {}
  for name, arr in flat.items():
    if name.endswith("/scale"):
      target[name] = arr
      continue
    rel = "target." + name.replace("/", ".")
    metadata = {
        "shape": list(arr.shape),
        "chunks": list(arr.shape),
        "dtype": "<f4",
        "compressor": {"id": "gzip", "level": 1},
    }
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": rel}, "metadata": metadata}
    absolute = {
        "driver": "zarr",
        "metadata": metadata,
        "kvstore": {"driver": "file", "path": str(ckpt_dir / rel)},
    }
    store = ts.open(absolute, create=True, open=True).result()
    store.write(arr).result()
    target[name] = spec
  contents = {
      "optimizer": {
          "target": _nest(target),
          "state": {
              "step": np.int64(100),
              "param_states": {"encoder": {"v": np.zeros(3, np.float32)}},
          },
      }
  }
  (ckpt_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))


def _write_orbax(ckpt_dir: pathlib.Path, flat: dict):
  ocp = pytest.importorskip("orbax.checkpoint")
  ocp.PyTreeCheckpointer().save(
      str(ckpt_dir), {"target": _nest(flat), "state": {"step": np.int32(7)}}
  )


def _encode(enc, ids, mask):
  return np.asarray(enc.encode_ids(ids, mask)[0])


def test_legacy_t5x_checkpoint_matches_safetensors(hf_dirs, t5ref, tmp_path):
  path, model = hf_dirs["original"]  # max_distance 128: inferable from shapes.
  _write_legacy_t5x(tmp_path / "t5x" / "checkpoint_100", _t5x_flat(model))
  (tmp_path / "t5x" / "checkpoint_50").mkdir()  # An older, incomplete step.
  from_t5x = text.load_text_encoder(tmp_path / "t5x", max_length=20)
  from_hf = text.load_text_encoder(path, max_length=20)
  assert from_t5x.config == from_hf.config  # Inferred without config.json.
  ids, mask = t5ref.padded_batch(99, [20, 7, 1], 20)
  np.testing.assert_array_equal(_encode(from_t5x, ids, mask), _encode(from_hf, ids, mask))
  assert from_t5x.identity == from_hf.identity


@pytest.mark.parametrize("kernels_3d", [False, True])
def test_orbax_t5x_checkpoint_matches_safetensors(hf_dirs, t5ref, tmp_path, kernels_3d):
  path, model = hf_dirs["v1_1"]
  root = tmp_path / "run"
  _write_orbax(root / "checkpoint_7", _t5x_flat(model, kernels_3d))
  # max_distance=20 is not in the weights: the run's config.json supplies it.
  shutil.copy(path / "config.json", root / "config.json")
  from_t5x = text.load_text_encoder(root, max_length=24)
  from_hf = text.load_text_encoder(path, max_length=24)
  assert from_t5x.config == from_hf.config
  ids, mask = t5ref.padded_batch(99, [24, 11], 24)
  np.testing.assert_array_equal(_encode(from_t5x, ids, mask), _encode(from_hf, ids, mask))
  assert from_t5x.identity == from_hf.identity


def test_sharded_safetensors_and_pytorch_bin(hf_dirs, t5ref, tmp_path):
  torch = t5ref.need_torch()
  path, model = hf_dirs["v1_1"]
  sharded = tmp_path / "sharded"
  model.save_pretrained(str(sharded), max_shard_size="40KB")
  assert (sharded / "model.safetensors.index.json").is_file()
  assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
  binary = tmp_path / "bin"
  binary.mkdir()
  shutil.copy(path / "config.json", binary / "config.json")
  torch.save(model.state_dict(), binary / "pytorch_model.bin")
  ids, mask = t5ref.padded_batch(99, [16, 4], 16)
  ref = _encode(text.load_text_encoder(path, max_length=16), ids, mask)
  for d in (sharded, binary):
    enc = text.load_text_encoder(d, max_length=16)
    np.testing.assert_array_equal(_encode(enc, ids, mask), ref)


def test_pytorch_bin_without_torch_is_a_clear_error(hf_dirs, tmp_path, monkeypatch):
  path, _ = hf_dirs["original"]
  shutil.copy(path / "config.json", tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(text.CheckpointError, match="torch, which is not installed"):
    text.load_text_encoder(tmp_path)


def test_identity_tracks_weights_not_format(hf_dirs, t5ref, tmp_path):
  path, _ = hf_dirs["original"]
  other = t5ref.build_reference(t5ref.CONFIGS["original"], seed=123)
  other.save_pretrained(str(tmp_path))
  a = text.load_text_encoder(path)
  b = text.load_text_encoder(tmp_path)
  assert a.identity != b.identity
  assert a.identity == text.load_text_encoder(path).identity
  assert a.identity != text.load_text_encoder(path, max_length=77).identity


def test_params_sharded_over_mesh_give_same_outputs(hf_dirs, t5ref):
  path, _ = hf_dirs["v1_1"]
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 (virtual) devices, see tests/conftest.py")
  ids, mask = t5ref.padded_batch(99, [16, 5, 9], 16)
  ref = _encode(text.load_text_encoder(path, max_length=16), ids, mask)
  for mesh in (
      Mesh(devices.reshape(2, 4), ("data", "fsdp")),
      jax.make_mesh((2, 4), ("data", "fsdp")),
  ):
    enc = text.load_text_encoder(path, max_length=16, mesh=mesh, min_shard_bytes=0)
    wi = enc.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert "fsdp" in tuple(wi.sharding.spec)
    assert len(wi.addressable_shards) == 8
    assert wi.addressable_shards[0].data.size * 4 == wi.size  # [48, 96/4]
    emb, out_mask = enc.encode_ids(ids, mask)
    assert emb.shape == (3, 16, 48) and out_mask.shape == (3, 16)
    np.testing.assert_allclose(np.asarray(emb), ref, atol=1e-5)


# -- bad input ---------------------------------------------------------------


def test_directory_without_weights(hf_dirs, tmp_path):
  with pytest.raises(text.CheckpointError, match="no weights found") as e:
    text.load_text_encoder(tmp_path)
  assert str(tmp_path) in str(e.value)
  assert "model.safetensors" in str(e.value)
  path, _ = hf_dirs["original"]
  shutil.copy(path / "config.json", tmp_path / "config.json")
  with pytest.raises(text.CheckpointError, match="no weights found"):
    text.load_text_encoder(tmp_path)


def test_unknown_name_or_path():
  with pytest.raises(FileNotFoundError, match="byt5-tiny-random") as e:
    text.load_text_encoder("t5-nonexistent-builtin")
  assert "t5-nonexistent-builtin" in str(e.value) and "--config.text.encoder=DIR" in str(e.value)


def test_unknown_architecture(hf_dirs, tmp_path):
  path, _ = hf_dirs["original"]
  shutil.copy(path / "model.safetensors", tmp_path / "model.safetensors")
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(model_type="bert", architectures=["BertModel"])
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(text.CheckpointError) as e:
    text.load_text_encoder(tmp_path)
  msg = str(e.value)
  assert str(tmp_path / "config.json") in msg
  assert "'bert'" in msg and "BertModel" in msg and "t5" in msg


def test_mismatched_shapes_name_file_key_and_shapes(hf_dirs, tmp_path):
  path, _ = hf_dirs["v1_1"]
  shutil.copy(path / "model.safetensors", tmp_path / "model.safetensors")
  cfg = json.loads((path / "config.json").read_text())
  cfg["d_ff"] = 80
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(text.CheckpointError) as e:
    text.load_text_encoder(tmp_path)
  msg = str(e.value)
  assert str(tmp_path / "model.safetensors") in msg
  assert "'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'" in msg
  assert "(96, 48)" in msg and "expected (80, 48)" in msg


def test_missing_key_names_file_and_key(hf_dirs, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel

  path, _ = hf_dirs["original"]
  weights = load_file(str(path / "model.safetensors"))
  del weights["encoder.block.1.layer.0.SelfAttention.k.weight"]
  save_file(weights, str(tmp_path / "model.safetensors"))
  shutil.copy(path / "config.json", tmp_path / "config.json")
  with pytest.raises(text.CheckpointError) as e:
    text.load_text_encoder(tmp_path)
  msg = str(e.value)
  assert "missing key 'encoder.block.1.layer.0.SelfAttention.k.weight'" in msg
  assert "expected shape (32, 32)" in msg and "model.safetensors" in msg


def test_t5x_shape_mismatch_names_checkpoint_and_key(hf_dirs, tmp_path):
  path, model = hf_dirs["v1_1"]
  _write_orbax(tmp_path / "checkpoint_1", _t5x_flat(model))
  cfg = json.loads((path / "config.json").read_text())
  cfg["d_model"] = 40
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(text.CheckpointError) as e:
    text.load_text_encoder(tmp_path)
  msg = str(e.value)
  assert "checkpoint_1" in msg and "target/token_embedder/embedding" in msg
  assert "(99, 48)" in msg and "expected (99, 40)" in msg


def test_host_memory_stays_under_twice_the_params(tmp_path):
  """Loads a ~100 MB checkpoint in a fresh process and checks peak RSS."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  d, dff, layers, vocab = 512, 2048, 3, 32128
  rng = np.random.default_rng(0)
  w = {
      "shared.weight": rng.standard_normal((vocab, d), np.float32),
      "encoder.final_layer_norm.weight": np.ones(d, np.float32),
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": rng.standard_normal(
          (32, 8), np.float32
      ),
  }
  for i in range(layers):
    b = f"encoder.block.{i}.layer"
    for n in "qkvo":
      w[f"{b}.0.SelfAttention.{n}.weight"] = rng.standard_normal((d, d), np.float32)
    w[f"{b}.0.layer_norm.weight"] = np.ones(d, np.float32)
    w[f"{b}.1.layer_norm.weight"] = np.ones(d, np.float32)
    for n in ("wi_0", "wi_1"):
      w[f"{b}.1.DenseReluDense.{n}.weight"] = rng.standard_normal((dff, d), np.float32)
    w[f"{b}.1.DenseReluDense.wo.weight"] = rng.standard_normal((d, dff), np.float32)
  nbytes = sum(a.nbytes for a in w.values())
  largest = max(a.nbytes for a in w.values())
  save_file(w, str(tmp_path / "model.safetensors"))
  del w
  (tmp_path / "config.json").write_text(
      json.dumps(
          dict(
              model_type="t5",
              architectures=["T5EncoderModel"],
              vocab_size=vocab,
              d_model=d,
              d_kv=64,
              d_ff=dff,
              num_layers=layers,
              num_heads=8,
              feed_forward_proj="gated-gelu",
          )
      )
  )
  # VmHWM (this process's peak RSS; ru_maxrss would include the parent's).
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from imagen_jax import text
      def peak():
        for line in open("/proc/self/status"):
          if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
      jax.block_until_ready(jax.device_put(np.ones(4)))
      before = peak()
      enc = text.load_text_encoder({str(tmp_path)!r})
      jax.block_until_ready(enc.params)
      print(before, peak())
  """)
  out = subprocess.run(
      [sys.executable, "-c", script],
      cwd=_REPO,
      check=True,
      capture_output=True,
      text=True,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )
  before, after = map(int, out.stdout.split()[-2:])
  growth = after - before
  print(f"params {nbytes / 2**20:.0f} MiB, peak RSS growth {growth / 2**20:.0f} MiB")
  # One copy of the params (on the CPU "device") plus one tensor in flight.
  assert nbytes * 0.9 < growth < nbytes + largest + (32 << 20)
  assert growth < 2 * nbytes


@pytest.mark.parametrize("layout", ["legacy", "orbax"])
def test_t5x_checkpoint_read_in_place_from_gcs(hf_dirs, t5ref, tmp_path, gcs_bucket, layout):
  """A t5x checkpoint in a bucket (as gs://t5-data holds them) is read by tensorstore in
  place, with the same outputs and identity as the local copy."""
  from imagen_jax.storage import paths  # pylint: disable=import-outside-toplevel

  path, model = hf_dirs["original"]
  local = tmp_path / "t5x"
  if layout == "legacy":
    _write_legacy_t5x(local / "checkpoint_100", _t5x_flat(model))
  else:
    _write_orbax(local / "checkpoint_100", _t5x_flat(model))
  remote = f"{gcs_bucket}/t5x"
  for f in local.rglob("*"):
    if f.is_file():
      paths.path(f"{remote}/{f.relative_to(local)}").write_bytes(f.read_bytes())
  from_gcs = text.load_text_encoder(remote, max_length=20)
  from_disk = text.load_text_encoder(local, max_length=20)
  ids, mask = t5ref.padded_batch(99, [20, 7], 20)
  np.testing.assert_array_equal(_encode(from_gcs, ids, mask), _encode(from_disk, ids, mask))
  assert from_gcs.identity == from_disk.identity
