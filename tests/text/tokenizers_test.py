"""Tokenizer parity with transformers, truncation counting, empty captions."""

import logging
import shutil

import numpy as np
import pytest

from imagen_jax.text import tokenizers

_CORPUS = [
    "a red circle above a small blue square",
    "two green triangles on a white background",
    "The quick brown fox jumps over the lazy dog.",
    "a photo of a cat sitting on a wooden table",
    "an oil painting of a lighthouse at sunset, highly detailed",
    "three yellow stars next to a large purple hexagon",
    "Numbers like 42 and 3.14 appear in captions too!",
    "café crème, naïve façade, über-cool — unicode words",
] * 20

CAPTIONS = [
    "a red circle above a small blue square",
    "",
    "  leading and   repeated   spaces  ",
    "UPPER case and MiXeD words, with punctuation?!",
    "café über naïve 42",
    "unseen wordz xyzzy qwerty",
    "a very long caption " * 20,
]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  d = tmp_path_factory.mktemp("spm")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_CORPUS),
      model_prefix=str(d / "spiece"),
      vocab_size=90,
      model_type="unigram",
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      character_coverage=1.0,
      minloglevel=2,
  )
  return d


def _hf_ids(hf_tok, texts, max_length):
  out = hf_tok(
      texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="np"
  )
  return out["input_ids"], out["attention_mask"].astype(bool)


def test_sentencepiece_matches_transformers_t5_tokenizer(spm_dir, tmp_path):
  transformers = pytest.importorskip("transformers")
  ours = tokenizers.load_tokenizer(spm_dir)
  assert isinstance(ours, tokenizers.SentencePieceTokenizer)
  hf_tok = transformers.T5Tokenizer.from_pretrained(str(spm_dir))
  for max_length in (8, 32):
    res = tokenizers.tokenize(ours, CAPTIONS, max_length)
    ids, mask = _hf_ids(hf_tok, CAPTIONS, max_length)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_array_equal(res.mask, mask)
  # The same vocabulary through tokenizer.json (the `tokenizers` library).
  hf_tok.save_pretrained(str(tmp_path))
  json_tok = tokenizers.HFJsonTokenizer(tmp_path / "tokenizer.json")
  res = tokenizers.tokenize(json_tok, CAPTIONS, 32)
  ids, mask = _hf_ids(hf_tok, CAPTIONS, 32)
  np.testing.assert_array_equal(res.ids, ids)
  np.testing.assert_array_equal(res.mask, mask)


def test_byte_tokenizer_matches_transformers_byt5():
  transformers = pytest.importorskip("transformers")
  hf_tok = transformers.ByT5Tokenizer()
  res = tokenizers.tokenize(tokenizers.ByteTokenizer(), CAPTIONS, 48)
  ids, mask = _hf_ids(hf_tok, CAPTIONS, 48)
  np.testing.assert_array_equal(res.ids, ids)
  np.testing.assert_array_equal(res.mask, mask)


def test_truncation_is_counted_in_one_warning(caplog, monkeypatch):
  monkeypatch.setattr(tokenizers, "_last_truncation_warning", [float("-inf")])
  texts = ["x" * 100, "short", "y" * 20, ""]
  with caplog.at_level(logging.WARNING):
    res = tokenizers.tokenize(tokenizers.ByteTokenizer(), texts, 16)
  assert res.num_truncated == 2
  lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
  assert lines == ["text: truncated 2 of 4 captions to max_length=16 tokens"]
  # Truncated rows keep max_length - 1 content ids then </s>.
  assert res.ids[0, -1] == 1 and res.mask[0].all()
  assert res.ids[0, 0] == ord("x") + 3
  # A second call within the interval counts but does not log again.
  with caplog.at_level(logging.WARNING):
    again = tokenizers.tokenize(tokenizers.ByteTokenizer(), texts, 16)
  assert again.num_truncated == 2
  lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
  assert len(lines) == 1


def test_empty_caption_is_eos_only():
  res = tokenizers.tokenize(tokenizers.ByteTokenizer(), [""], 6)
  np.testing.assert_array_equal(res.ids, [[1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(res.mask, [[True] + [False] * 5])


def test_empty_batch_and_bad_input():
  res = tokenizers.tokenize(tokenizers.ByteTokenizer(), [], 6)
  assert res.ids.shape == (0, 6) and res.mask.shape == (0, 6)
  with pytest.raises(TypeError, match="list of captions"):
    tokenizers.tokenize(tokenizers.ByteTokenizer(), "one string", 6)


def test_missing_tokenizer_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    tokenizers.load_tokenizer(tmp_path)


def test_checkpoint_with_tokenizer_encodes_like_pytorch(spm_dir, hf_dirs, t5ref, tmp_path):
  """End to end: captions -> our tokenizer + encoder == HF tokenizer + torch."""
  transformers = pytest.importorskip("transformers")
  from imagen_jax import text  # pylint: disable=import-outside-toplevel

  path, model = hf_dirs["v1_1"]
  shutil.copytree(path, tmp_path / "model")
  shutil.copy(spm_dir / "spiece.model", tmp_path / "model" / "spiece.model")
  enc = text.load_text_encoder(tmp_path / "model", max_length=24)
  assert isinstance(enc.tokenizer, tokenizers.SentencePieceTokenizer)
  hf_tok = transformers.T5Tokenizer.from_pretrained(str(spm_dir))
  ids, mask = _hf_ids(hf_tok, CAPTIONS, 24)
  ref = t5ref.reference_outputs(model, ids, mask)
  emb, out_mask = (np.asarray(a) for a in enc.encode(CAPTIONS))
  np.testing.assert_array_equal(out_mask, mask)
  assert np.abs(emb - ref)[mask].max() <= 1e-4


def test_tokenizer_larger_than_embedding_is_rejected(hf_dirs, tmp_path):
  from imagen_jax import text  # pylint: disable=import-outside-toplevel

  path, _ = hf_dirs["original"]  # vocab_size 99 < 259 byte ids.
  with pytest.raises(text.CheckpointError, match="259 ids .* only 99 rows"):
    text.load_text_encoder(path, tokenizer="byte")
