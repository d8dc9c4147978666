"""The text-only pretrained encoder: HF export parity, vocabulary, reuse, atomic writes."""

import dataclasses
import json

import numpy as np
import pytest

from imagen_jax import text
from imagen_jax.data import shapes
from imagen_jax import encoder_pretrain as pretrain

# A few seconds: enough to exercise every path, not to learn anything.
TINY = pretrain.PretrainConfig(
    steps=20, batch_size=16, corpus_size=600, eval_size=64, steps_per_call=10, warmup_steps=5
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("pretrain") / "enc"
  metrics = pretrain.pretrain_encoder(out, TINY)
  return out, metrics


def test_writes_a_complete_hf_directory(tiny_dir):
  out, metrics = tiny_dir
  assert sorted(p.name for p in out.iterdir()) == sorted(pretrain.COMPLETE_FILES)
  assert not list(out.parent.glob(".enc.tmp-*"))
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["model_type"] == "t5" and cfg["architectures"] == ["T5EncoderModel"]
  assert cfg["feed_forward_proj"] == "gated-gelu" and cfg["is_gated_act"] is True
  assert cfg["dense_act_fn"] == "gelu_new"
  assert (cfg["pad_token_id"], cfg["eos_token_id"], cfg["decoder_start_token_id"]) == (0, 1, 0)
  assert (cfg["d_model"], cfg["num_layers"], cfg["num_heads"], cfg["d_kv"], cfg["d_ff"]) == (
      64,
      2,
      4,
      16,
      128,
  )
  assert cfg["vocab_size"] == metrics["vocab_size"]
  assert json.loads((out / pretrain.METRICS_FILE).read_text()) == metrics
  assert metrics["config"] == TINY.to_dict()


def test_transformers_reads_the_same_encoder(tiny_dir, t5ref):
  torch = t5ref.need_torch()
  import transformers  # pylint: disable=import-outside-toplevel

  out, _ = tiny_dir
  enc = text.load_text_encoder(out, max_length=40)
  assert enc.dim == 64
  ref = transformers.T5EncoderModel.from_pretrained(str(out)).eval()
  captions = pretrain.caption_corpus(5, seed=7, max_objects=3, paraphrases=2) + [""]
  ids, mask = enc.tokenize(captions)
  emb = np.asarray(enc.encode_ids(ids, mask)[0])
  with torch.no_grad():
    theirs = ref(
        input_ids=torch.from_numpy(ids.astype(np.int64)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
    ).last_hidden_state.numpy()
  diff = np.abs(emb - theirs)[mask].max()
  print(f"max abs diff vs transformers T5EncoderModel: {diff:.3g}")
  assert diff <= 1e-4
  assert np.abs(theirs[mask]).max() > 0.1  # not vacuous


def test_vocabulary_keeps_colour_and_shape_words_whole(tiny_dir):
  out, _ = tiny_dir
  enc = text.load_text_encoder(out, max_length=16)
  tok = enc.tokenizer
  assert (tok.pad_id, tok.eos_id) == (0, 1)
  for word in [*shapes.COLOURS, *shapes.SHAPES]:
    assert len(tok.content_ids([word])[0]) == 1, word
  # T5's convention: content, then </s>, then pads.
  ids, mask = enc.tokenize(["a red circle"])
  n = len(tok.content_ids(["a red circle"])[0])
  assert ids[0, n] == 1 and mask[0].sum() == n + 1 and np.all(ids[0, n + 1 :] == 0)


def test_too_long_caption_is_truncated_and_counted(tiny_dir):
  # The loader truncates (T5's truncation=True), never errors: the count is
  # the signal (and a rate-limited warning). The caption still ends in </s>.
  out, _ = tiny_dir
  enc = text.load_text_encoder(out, max_length=8)
  ids, mask = enc.tokenize(["a small red circle on the left side of the image"])
  assert enc.num_truncated == 1
  assert mask.all() and ids[0, -1] == 1


def test_rerun_reuses_a_complete_directory(tiny_dir, monkeypatch):
  out, metrics = tiny_dir

  def fail(*args):
    raise AssertionError("retrained")

  monkeypatch.setattr(pretrain, "_pretrain_into", fail)
  assert pretrain.pretrain_encoder(out, TINY) == metrics
  assert pretrain.pretrain_encoder(out) == metrics  # config=None: whatever is there
  with pytest.raises(ValueError, match="another config"):
    pretrain.pretrain_encoder(out, dataclasses.replace(TINY, steps=21))


def test_interrupted_run_leaves_nothing_and_stale_temp_is_ignored(tiny_dir, tmp_path, monkeypatch):
  out = tmp_path / "enc"
  stale = tmp_path / ".enc.tmp-1-deadbeef"
  stale.mkdir()
  (stale / "config.json").write_text("{}")
  real = pretrain._train  # pylint: disable=protected-access

  def interrupted(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(pretrain, "_train", interrupted)
  with pytest.raises(KeyboardInterrupt):
    pretrain.pretrain_encoder(out, TINY)
  assert not out.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name]

  monkeypatch.setattr(pretrain, "_train", real)
  metrics = pretrain.pretrain_encoder(out, TINY)
  assert pretrain.is_complete(out) and stale.is_dir()
  # Deterministic for a seed: the same bytes as the fixture's run.
  first, first_metrics = tiny_dir
  for name in ("model.safetensors", "spiece.model", "config.json"):
    assert (out / name).read_bytes() == (first / name).read_bytes(), name
  assert metrics["after"] == first_metrics["after"]


def test_incomplete_output_directory_is_not_overwritten(tmp_path):
  out = tmp_path / "enc"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not a complete pretrained encoder"):
    pretrain.pretrain_encoder(out, TINY)
  assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "field,value",
    [("steps", 0), ("mask_rate", 1.5), ("split", "val"), ("max_objects", 4), ("lr", -1.0)],
)
def test_bad_config_values_name_the_value(field, value):
  with pytest.raises(ValueError, match=f"{field}.*{value!r}"):
    pretrain.PretrainConfig(**{field: value})


def test_caption_corpus_is_text_from_every_pair():
  texts = pretrain.caption_corpus(400, seed=3)
  assert texts == pretrain.caption_corpus(400, seed=3)
  assert texts != pretrain.caption_corpus(400, seed=4)
  for colour, shape in shapes.HELDOUT:  # split "all" reads about every pair
    assert any(f"{colour} {shape}" in t for t in texts), (colour, shape)
  pairs = pretrain.caption_corpus(20, seed=3, paraphrases=2)
  assert all(t.count(" . ") == 1 for t in pairs)


@pytest.mark.slow
def test_pretraining_learns_masked_colours_and_shapes(tmp_path):
  config = pretrain.PretrainConfig(steps=400, batch_size=64, corpus_size=3000, eval_size=400)
  metrics = pretrain.pretrain_encoder(tmp_path / "enc", config)
  print(json.dumps({k: metrics[k] for k in ("before", "after", "train_seconds")}, indent=1))
  chance = metrics["chance"]
  for split in ("eval", "heldout_split", "eval_unseen_texts"):
    before, after = metrics["before"][split], metrics["after"][split]
    assert after["num_colour"] > 30 and after["num_shape"] > 30
    for word in ("colour", "shape"):
      assert before[f"{word}_accuracy"] < chance[word]
      assert after[f"{word}_accuracy"] > chance[word] + 0.25, (split, word, after)
