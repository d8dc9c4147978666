"""The CLIP tokenizer of a Hugging Face directory, padding to the text tower's positions.

``tokenizer.json`` (what ``CLIPTokenizer.save_pretrained`` writes, and what hub CLIP
directories ship) is read with the ``tokenizers`` library; a directory with only the
slow-tokenizer files (``vocab.json`` + ``merges.txt``) is read with transformers'
``AutoTokenizer`` (imported lazily; transformers is then needed). Special tokens come
from ``tokenizer_config.json`` / ``special_tokens_map.json`` (defaults: CLIP's
``<|startoftext|>``, ``<|endoftext|>``, pad = eos).

Each caption becomes ``[bos] + content + [eos]`` then pads up to ``max_length`` (what
``tokenizer(texts, padding="max_length", max_length=L)`` gives); the mask is True on the
real tokens. A caption longer than the encoder takes is an error naming it, never
truncated silently.
"""

import json
import pathlib
from typing import Sequence

import numpy as np

TOKENIZER_JSON = "tokenizer.json"
_SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}


def _special_tokens(directory: pathlib.Path) -> dict[str, str]:
  found = {}
  for name in reversed(_SPECIAL_FILES):  # tokenizer_config.json wins
    path = directory / name
    if not path.is_file():
      continue
    try:
      cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: cannot read: {e}") from e
    for key in ("bos_token", "eos_token", "pad_token"):
      value = cfg.get(key)
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        found[key] = value
  tokens = {**_DEFAULTS, **found}
  tokens.setdefault("pad_token", tokens["eos_token"])
  return tokens


class ClipTokenizer:
  """``tokenize(texts) -> (ids int32 [B, L], mask bool [B, L])`` with ``L = max_length``."""

  def __init__(self, directory, max_length: int):
    self.directory = pathlib.Path(directory)
    self.max_length = int(max_length)
    tokens = _special_tokens(self.directory)
    self.bos_token, self.eos_token = tokens["bos_token"], tokens["eos_token"]
    if (self.directory / TOKENIZER_JSON).is_file():
      import tokenizers  # pylint: disable=import-outside-toplevel

      self._tok = tokenizers.Tokenizer.from_file(str(self.directory / TOKENIZER_JSON))
      self._tok.no_truncation()
      self._tok.no_padding()
      token_id = self._tok.token_to_id
      self._content = lambda texts: [
          e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)
      ]
    elif (self.directory / "vocab.json").is_file() and (self.directory / "merges.txt").is_file():
      try:
        import transformers  # pylint: disable=import-outside-toplevel
      except ImportError as e:
        raise ImportError(
            f"{self.directory}: has vocab.json/merges.txt but no tokenizer.json; reading "
            "them needs transformers (pip install transformers), or save the tokenizer "
            "with a tokenizer.json"
        ) from e
      self._tok = transformers.AutoTokenizer.from_pretrained(str(self.directory))
      token_id = self._tok.convert_tokens_to_ids
      self._content = lambda texts: self._tok(list(texts), add_special_tokens=False)["input_ids"]
    else:
      raise FileNotFoundError(
          f"{self.directory}: no CLIP tokenizer: expected tokenizer.json (or vocab.json + "
          f"merges.txt); found {sorted(p.name for p in self.directory.iterdir())[:12]}"
      )
    ids = {k: token_id(tokens[k]) for k in ("bos_token", "eos_token", "pad_token")}
    absent = [tokens[k] for k, v in ids.items() if v is None]
    if absent:
      raise ValueError(f"{self.directory}: special tokens {absent} are not in the vocabulary")
    self.bos_id, self.eos_id, self.pad_id = ids["bos_token"], ids["eos_token"], ids["pad_token"]

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      raise TypeError("tokenize expects a list of captions, not one string")
    texts = [str(t) for t in texts]
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for row, content in enumerate(self._content(texts) if texts else []):
      seq = [self.bos_id, *content, self.eos_id]
      if len(seq) > self.max_length:
        shown = texts[row] if len(texts[row]) <= 80 else texts[row][:77] + "..."
        raise ValueError(
            f"caption {row} ({shown!r}) is {len(seq)} tokens with {self.bos_token} and "
            f"{self.eos_token}: a caption longer than the encoder takes "
            f"(max_position_embeddings={self.max_length})"
        )
      ids[row, : len(seq)] = seq
      mask[row, : len(seq)] = True
    return ids, mask
