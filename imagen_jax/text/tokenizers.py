"""Caption tokenizers for T5 encoders: SentencePiece, tokenizer.json and ByT5 bytes.

Every tokenizer turns a caption into its content ids (no special tokens);
`tokenize` then applies T5's convention, identical to transformers'
`T5Tokenizer(texts, max_length=L, truncation=True, padding="max_length")`:
content truncated to ``L - 1`` ids, then ``</s>``, then ``<pad>`` up to ``L``.
An empty caption is valid and becomes ``[</s>, <pad>, ...]``.

``sentencepiece`` and ``tokenizers`` are imported lazily, when a tokenizer
that needs them is built.
"""

import dataclasses
import hashlib
import pathlib
import time
from typing import Protocol, Sequence

from absl import logging
import numpy as np

from imagen_jax.text import remote

SPIECE_FILE = "spiece.model"
TOKENIZER_JSON_FILE = "tokenizer.json"

TRUNCATION_WARNING_INTERVAL_S = 60.0
_last_truncation_warning = [float("-inf")]


class Tokenizer(Protocol):
  pad_id: int
  eos_id: int
  identity: str  # stable hash of the vocabulary, part of the encoder identity
  vocab_size: int  # ids produced are < vocab_size

  def content_ids(self, texts: Sequence[str]) -> list[list[int]]:
    ...


@dataclasses.dataclass
class TokenizeResult:
  ids: np.ndarray  # int32 [B, L]
  mask: np.ndarray  # bool [B, L]
  num_truncated: int  # captions whose content did not fit


def _file_hash(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


class ByteTokenizer:
  """ByT5's byte-level vocabulary: pad 0, eos 1, unk 2, byte b -> b + 3."""

  pad_id = 0
  eos_id = 1
  offset = 3
  identity = "byt5-bytes-v1"
  vocab_size = 256 + 3

  def content_ids(self, texts):
    return [[b + self.offset for b in t.encode("utf-8")] for t in texts]


class SentencePieceTokenizer:
  """T5's own tokenizer: a SentencePiece model file (``spiece.model``)."""

  def __init__(self, path):
    import sentencepiece  # pylint: disable=import-outside-toplevel

    self.path = pathlib.Path(path)
    self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
    self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else 1
    self.identity = "spm-" + _file_hash(self.path)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def content_ids(self, texts):
    return self._sp.encode(list(texts))


class HFJsonTokenizer:
  """A Hugging Face ``tokenizer.json`` read with the ``tokenizers`` library."""

  def __init__(self, path, eos_token="</s>", pad_token="<pad>"):
    import tokenizers  # pylint: disable=import-outside-toplevel

    self.path = pathlib.Path(path)
    self._tok = tokenizers.Tokenizer.from_file(str(self.path))
    self._tok.no_truncation()
    self._tok.no_padding()
    eos = self._tok.token_to_id(eos_token)
    pad = self._tok.token_to_id(pad_token)
    if eos is None or pad is None:
      raise ValueError(
          f"{self.path}: expected T5 special tokens {eos_token!r} and "
          f"{pad_token!r} in the vocabulary, found eos={eos}, pad={pad}"
      )
    self.eos_id, self.pad_id = eos, pad
    self.identity = "hfjson-" + _file_hash(self.path)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=False)

  def content_ids(self, texts):
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [e.ids for e in encodings]


def find_tokenizer_file(directories: Sequence[pathlib.Path]):
  """The first ``spiece.model`` (preferred: T5's own) or ``tokenizer.json`` in the
  directories (local or remote paths), or None."""
  for d in directories:
    for name in (SPIECE_FILE, TOKENIZER_JSON_FILE):
      if (d / name).is_file():
        return d / name
  return None


def _from_file(path) -> Tokenizer:
  local = remote.local_copy(path)  # sentencepiece/tokenizers read local files
  if pathlib.Path(path).name.endswith(".json"):
    return HFJsonTokenizer(local)
  return SentencePieceTokenizer(local)


def file_identity(path) -> str:
  """The `identity` the tokenizer in file `path` has, without building it."""
  digest = hashlib.sha256(remote.path(path).read_bytes()).hexdigest()
  return ("hfjson-" if pathlib.Path(path).name.endswith(".json") else "spm-") + digest


def find_tokenizer(directories: Sequence[pathlib.Path]) -> Tokenizer | None:
  """The first ``spiece.model`` (preferred: T5's own) or ``tokenizer.json``; a remote
  file is copied to local disk first (`paths.local_copy`)."""
  found = find_tokenizer_file(directories)
  return None if found is None else _from_file(found)


def load_tokenizer(path) -> Tokenizer:
  """A tokenizer from a file or a directory (local or `gs://`), or ``"byte"`` for ByT5."""
  if str(path) in ("byte", "byt5"):
    return ByteTokenizer()
  path = remote.path(path)
  if path.is_file():
    return _from_file(path)
  tok = find_tokenizer([path])
  if tok is None:
    raise FileNotFoundError(
        f"{path}: no tokenizer found, expected {SPIECE_FILE} or {TOKENIZER_JSON_FILE}"
    )
  return tok


def tokenize(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> TokenizeResult:
  """Pads/truncates to exactly ``max_length`` (content, ``</s>``, pads).

  Logs a warning line with the number of truncated captions (at most once a
  minute).
  """
  if isinstance(texts, str):
    raise TypeError("tokenize expects a list of captions, not one string")
  texts = [str(t) for t in texts]
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  ids = np.full((len(texts), max_length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), max_length), bool)
  num_truncated = 0
  for row, content in enumerate(tokenizer.content_ids(texts) if texts else []):
    if len(content) > max_length - 1:
      num_truncated += 1
      content = content[: max_length - 1]
    n = len(content)
    ids[row, :n] = content
    ids[row, n] = tokenizer.eos_id
    mask[row, : n + 1] = True
  if num_truncated:
    # One line per call, at most once a minute (a training run tokenizes
    # every step); TextEncoder.num_truncated keeps the exact running count.
    now = time.monotonic()
    if now - _last_truncation_warning[0] >= TRUNCATION_WARNING_INTERVAL_S:
      _last_truncation_warning[0] = now
      logging.warning(
          "text: truncated %d of %d captions to max_length=%d tokens",
          num_truncated,
          len(texts),
          max_length,
      )
  return TokenizeResult(ids, mask, num_truncated)
