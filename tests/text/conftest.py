"""Fixtures for the text tests: tiny PyTorch T5 reference models saved offline."""

import pathlib

import numpy as np
import pytest

# Two architectures: T5 v1.1 / Flan-T5 (gated GELU, untied) and original T5
# (ReLU, tied). Small max_distance so the logarithmic buckets are exercised
# at short lengths.
V11 = dict(
    vocab_size=99,
    d_model=48,
    d_kv=12,
    d_ff=96,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=20,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
)
ORIGINAL = dict(
    vocab_size=99,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    dropout_rate=0.0,
)
CONFIGS = {"v1_1": V11, "original": ORIGINAL}


def _need_torch():
  torch = pytest.importorskip("torch", reason="torch is not installed: no PyTorch reference model")
  pytest.importorskip("transformers", reason="transformers is not installed: no reference T5")
  return torch


def build_reference(config: dict, seed: int = 0):
  """A transformers `T5EncoderModel` with random weights (norm scales too)."""
  torch = _need_torch()
  import transformers  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  cfg = transformers.T5Config(**config)
  model = transformers.T5EncoderModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


def reference_outputs(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  torch = _need_torch()
  with torch.no_grad():
    out = model(
        input_ids=torch.from_numpy(ids.astype(np.int64)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
    )
  return out.last_hidden_state.numpy()


def padded_batch(vocab: int, lengths, max_length: int, seed: int = 0):
  """Random ids (2..vocab) ending in </s>=1, padded with 0."""
  rng = np.random.RandomState(seed)
  ids = np.zeros((len(lengths), max_length), np.int32)
  mask = np.zeros((len(lengths), max_length), bool)
  for i, n in enumerate(lengths):
    ids[i, : n - 1] = rng.randint(2, vocab, size=n - 1)
    ids[i, n - 1] = 1
    mask[i, :n] = True
  return ids, mask


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
  """{"v1_1": (dir, model), "original": (dir, model)} saved with save_pretrained."""
  out = {}
  for name, config in CONFIGS.items():
    model = build_reference(config, seed=len(out))
    d = tmp_path_factory.mktemp(f"hf_{name}")
    model.save_pretrained(str(d))
    out[name] = (pathlib.Path(d), model)
  return out


@pytest.fixture(scope="session")
def t5ref():
  """The helpers above, for test modules (pytest's importlib mode cannot import conftest)."""
  import types  # pylint: disable=import-outside-toplevel

  return types.SimpleNamespace(
      CONFIGS=CONFIGS,
      need_torch=_need_torch,
      build_reference=build_reference,
      reference_outputs=reference_outputs,
      padded_batch=padded_batch,
  )
