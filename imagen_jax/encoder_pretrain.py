"""Imagen's recipe in miniature: a small T5 encoder pretrained on text alone.

    metrics = pretrain_encoder("/tmp/shapes-t5")           # trains once, then reuses
    enc = load_text_encoder("/tmp/shapes-t5", max_length=64)  # frozen for the diffusion stages

`pretrain_encoder` draws a text-only corpus from the shapes caption grammar
(`caption_corpus`), trains a word-piece SentencePiece vocabulary on it, pretrains
a `t5.T5Encoder` with a masked-token objective (a linear LM head on the final-normed
encoder output, cross-entropy on the masked positions, AdamW), and writes a Hugging
Face ``T5EncoderModel`` directory (`hf_export`) plus ``spiece.model`` and
``pretrain_metrics.json``. The LM head is not exported.

A masked colour word in a single caption is unpredictable (every attribute is
drawn independently, so the best guess is the prior, 1/6). Each pretraining text
is therefore a short "document": ``paraphrases`` differently phrased captions of
one scene, joined by " . ", like text that mentions a thing more than once. To
fill in a masked colour or shape the encoder has to find the same object in the
other sentence, i.e. bind attributes to their object; that is what the metrics
measure against the 1/6 and 1/3 priors.

The output directory is written atomically (a temporary sibling renamed into
place). If it is already complete its saved metrics are returned without
training; leftover temporary directories from interrupted runs are ignored.
"""

import dataclasses
import io
import json
import os
import pathlib
import shutil
import time
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import optax

from imagen_jax.data import shapes
from imagen_jax.text import builtin
from imagen_jax.text import checkpoints
from imagen_jax.text import hf_export
from imagen_jax.text import t5
from imagen_jax.text import tokenizers

METRICS_FILE = "pretrain_metrics.json"
MASK_PIECE = "<extra_id_0>"
COMPLETE_FILES = (
    checkpoints.CONFIG_FILE,
    hf_export.WEIGHTS_FILE,
    tokenizers.SPIECE_FILE,
    METRICS_FILE,
)
_SPLITS = ("train", "heldout", "all")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Everything that determines the pretrained encoder (all of it is saved)."""

  # 800 x 64 texts: ~35 s on 2 busy CPU cores (600 x 128 learns no better, ~55 s).
  steps: int = 800
  batch_size: int = 64
  lr: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01
  mask_rate: float = 0.15  # fraction of words masked (whole words)
  random_token_rate: float = 0.1  # of masked words: replaced by a random piece (BERT)
  keep_rate: float = 0.1  # of masked words: left as they are (BERT)
  vocab_size: int = 128  # SentencePiece's (soft) target; the model uses the real size
  corpus_size: int = 20000  # training texts
  eval_size: int = 1000  # held-out texts (a separate draw)
  paraphrases: int = 2  # captions of one scene per text
  seed: int = 0
  split: str = "all"
  max_objects: int = 1
  max_length: int = 64  # longest allowed text, in tokens with </s>
  steps_per_call: int = 50  # training steps per jitted lax.scan
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  d_kv: int = 16
  d_ff: int = 128
  feed_forward_proj: str = "gated-gelu"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128

  def __post_init__(self):
    positive = (
        "steps batch_size vocab_size corpus_size eval_size paraphrases max_length "
        "steps_per_call d_model num_layers num_heads d_kv d_ff "
        "relative_attention_num_buckets relative_attention_max_distance"
    ).split()
    for name in positive:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PretrainConfig.{name} must be a positive integer, got {value!r}")
    if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"PretrainConfig.warmup_steps must be >= 0, got {self.warmup_steps!r}")
    if not self.lr > 0:
      raise ValueError(f"PretrainConfig.lr must be > 0, got {self.lr!r}")
    if not self.weight_decay >= 0:
      raise ValueError(f"PretrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
    for name in ("mask_rate", "random_token_rate", "keep_rate"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"PretrainConfig.{name} must be in [0, 1], got {value!r}")
    if self.mask_rate == 0.0:
      raise ValueError("PretrainConfig.mask_rate must be > 0, got 0.0")
    if self.random_token_rate + self.keep_rate > 1.0:
      raise ValueError(
          f"PretrainConfig.random_token_rate + keep_rate must be <= 1, got "
          f"{self.random_token_rate} + {self.keep_rate}"
      )
    if self.vocab_size < 16:
      raise ValueError(f"PretrainConfig.vocab_size must be >= 16, got {self.vocab_size}")
    if self.split not in _SPLITS:
      raise ValueError(f"PretrainConfig.split must be one of {_SPLITS}, got {self.split!r}")
    if self.max_objects not in (1, 2, 3):
      raise ValueError(f"PretrainConfig.max_objects must be 1, 2 or 3, got {self.max_objects!r}")
    self.t5_config(vocab_size=self.vocab_size)  # validates feed_forward_proj

  def t5_config(self, vocab_size: int) -> t5.T5Config:
    return t5.T5Config(
        vocab_size=vocab_size,
        d_model=self.d_model,
        d_kv=self.d_kv,
        d_ff=self.d_ff,
        num_layers=self.num_layers,
        num_heads=self.num_heads,
        relative_attention_num_buckets=self.relative_attention_num_buckets,
        relative_attention_max_distance=self.relative_attention_max_distance,
        feed_forward_proj=self.feed_forward_proj,
    )

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------
# Corpus and vocabulary.


def caption_corpus(
    num: int, seed: int, split: str = "all", max_objects: int = 1, *, paraphrases: int = 1
) -> list[str]:
  """``num`` texts from the shapes caption grammar; deterministic for ``seed``.

  Text only: no image is rendered. With split "all" every (colour, shape) pair
  appears, including the `shapes.HELDOUT` pairs that the paired image data of
  split "train" never shows -- the analogue of T5 having read about things its
  image-text pairs never show. ``paraphrases`` > 1 joins that many different
  phrasings of the same scene with " . " (see the module docstring).
  """
  if num < 0 or paraphrases < 1:
    raise ValueError(
        f"need num >= 0 and paraphrases >= 1, got num={num}, paraphrases={paraphrases}"
    )
  rng = np.random.default_rng(seed)
  texts = []
  for _ in range(num):
    scene = shapes.sample_scene(rng, split, max_objects=max_objects)
    styles = [scene.style] + [int(s) for s in rng.integers(2**31, size=paraphrases - 1)]
    texts.append(" . ".join(shapes.caption(dataclasses.replace(scene, style=s)) for s in styles))
  return texts


def train_vocabulary(texts: list[str], vocab_size: int) -> bytes:
  """A word-piece SentencePiece model (T5's ids: pad 0, </s> 1, unk 2, no bos) as bytes.

  `MASK_PIECE` is a user-defined symbol (id 3). ``vocab_size`` is a soft limit
  (``hard_vocab_limit=False``): a tiny corpus may give fewer pieces. BPE, not
  T5's unigram: on this ~35-word language sentencepiece 0.2's unigram trainer
  keeps only ~60 pieces and splits even "red" and "yellow" into letters, where
  BPE keeps every frequent word whole.
  """
  import sentencepiece  # pylint: disable=import-outside-toplevel

  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=model,
      model_type="bpe",
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      character_coverage=1.0,
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      pad_piece="<pad>",
      eos_piece="</s>",
      unk_piece="<unk>",
      user_defined_symbols=[MASK_PIECE],
      num_threads=1,  # deterministic
      minloglevel=2,
  )
  return model.getvalue()


def _word_pieces(sp, words) -> dict[str, int]:
  """{word: its single piece id}; raises if a word splits into several pieces."""
  out = {}
  for w in words:
    ids = sp.encode(w)
    if len(ids) != 1:
      raise ValueError(
          f"vocabulary splits {w!r} into {[sp.id_to_piece(i) for i in ids]}; "
          "increase PretrainConfig.vocab_size"
      )
    out[w] = ids[0]
  return out


# --------------------------------------------------------------------------
# Masking and training.


@dataclasses.dataclass(frozen=True)
class _Vocab:
  mask_id: int
  word_start: np.ndarray  # bool [V]: the piece begins a word ("\u2581...")
  content: np.ndarray  # bool [V]: pieces a random replacement may draw
  colour_ids: tuple[int, ...]
  shape_ids: tuple[int, ...]


def _word_index(ids: np.ndarray, mask: np.ndarray, word_start: np.ndarray):
  """Per token, the index of its word ([N, L], -1 at </s> and pads); words per row."""
  content = np.arange(ids.shape[1])[None, :] < (mask.sum(1, keepdims=True) - 1)
  starts = content & (word_start[ids] | (np.arange(ids.shape[1]) == 0)[None, :])
  words = np.where(content, np.cumsum(starts, axis=1) - 1, -1)
  return words, starts.sum(1)


def _mask_words(rng, ids, words, num_words, vocab: _Vocab, rates):
  """BERT-style whole-word masking: (inputs, weights) for one batch of rows.

  Each word is chosen with probability ``rates[0]`` (at least one per row); a
  chosen word's pieces become the mask piece, or with probabilities
  ``rates[1]``/``rates[2]`` random pieces / themselves. Weights mark every
  chosen piece.
  """
  mask_rate, random_rate, keep_rate = rates
  b, w = ids.shape[0], max(int(num_words.max()), 1)
  valid = np.arange(w)[None, :] < num_words[:, None]
  chosen = (rng.random((b, w)) < mask_rate) & valid
  empty = ~chosen.any(1) & (num_words > 0)
  pick = (rng.random(b) * num_words).astype(np.int64)
  chosen[np.nonzero(empty)[0], pick[empty]] = True
  action = rng.random((b, w))
  rows = np.arange(b)[:, None]
  safe = np.maximum(words, 0)
  chosen_tok = (words >= 0) & chosen[rows, safe]
  action_tok = action[rows, safe]
  inputs = ids.copy()
  to_mask = chosen_tok & (action_tok < 1.0 - random_rate - keep_rate)
  to_random = chosen_tok & ~to_mask & (action_tok < 1.0 - keep_rate)
  inputs[to_mask] = vocab.mask_id
  content_ids = np.nonzero(vocab.content)[0]
  inputs[to_random] = rng.choice(content_ids, size=int(to_random.sum()))
  return inputs, chosen_tok.astype(np.float32)


@dataclasses.dataclass
class _TrainResult:
  params: dict
  metrics: dict


def _train(t5_config, params, vocab, train_ids, eval_sets, config, seed) -> _TrainResult:
  module = t5.T5Encoder(t5_config)
  d, v = t5_config.d_model, t5_config.vocab_size
  head = {
      "kernel": np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (d, v))) * d**-0.5,
      "bias": np.zeros((v,), np.float32),
  }
  state_params = jax.device_put({"encoder": params, "head": head})

  def logits_fn(p, ids, mask):
    h = module.apply({"params": p["encoder"]}, ids, mask)
    return h @ p["head"]["kernel"] + p["head"]["bias"]

  def loss_fn(p, inputs, mask, targets, weights):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, inputs, mask), targets)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)

  # optax counts the warm-up inside `decay_steps`: a run shorter than its warm-up warms up
  # over half of it and still decays (a zero-length cosine raises).
  warmup = min(config.warmup_steps, config.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.lr, warmup, max(config.steps, warmup + 1), config.lr * 0.05
  )
  decay_mask = jax.tree.map(lambda x: x.ndim == 2, state_params)
  tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
  )

  def step(carry, batch):
    p, opt = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  run = jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches), donate_argnums=0)

  def evaluate(p, ids):
    words, num_words = _word_index(ids, ids != 0, vocab.word_start)
    inputs, weights = _mask_words(
        np.random.default_rng(seed + 1), ids, words, num_words, vocab, (config.mask_rate, 0, 0)
    )
    pred = np.asarray(jax.device_get(predict(p, jax.device_put(inputs), jax.device_put(ids != 0))))
    hit = (pred == ids) & (weights > 0)
    out = {"num_masked": int(weights.sum()), "accuracy": float(hit.sum() / weights.sum())}
    for name, group in (("colour", vocab.colour_ids), ("shape", vocab.shape_ids)):
      sel = np.isin(ids, group) & (weights > 0)
      out[f"num_{name}"] = int(sel.sum())
      out[f"{name}_accuracy"] = float(hit[sel].sum() / max(sel.sum(), 1))
    return out

  predict = jax.jit(lambda p, ids, mask: jnp.argmax(logits_fn(p, ids, mask), -1))
  before = {name: evaluate(state_params, ids) for name, ids in eval_sets.items()}

  rng = np.random.default_rng(seed)
  words, num_words = _word_index(train_ids, train_ids != 0, vocab.word_start)
  rates = (config.mask_rate, config.random_token_rate, config.keep_rate)
  carry = (state_params, tx.init(state_params))
  losses, done, start = [], 0, time.perf_counter()
  while done < config.steps:
    k = min(config.steps_per_call, config.steps - done)
    rows = rng.integers(len(train_ids), size=(k, config.batch_size))
    chunk = [_mask_words(rng, train_ids[r], words[r], num_words[r], vocab, rates) for r in rows]
    inputs = np.stack([c[0] for c in chunk])
    batch = (inputs, train_ids[rows] != 0, train_ids[rows], np.stack([c[1] for c in chunk]))
    carry, loss = run(carry, jax.device_put(batch))
    losses.extend(np.asarray(jax.device_get(loss)).tolist())
    done += k
    if not np.all(np.isfinite(losses[-k:])):
      raise FloatingPointError(f"pretraining loss became nan or inf within steps {done - k}-{done}")
  train_seconds = time.perf_counter() - start
  final = carry[0]
  after = {name: evaluate(final, ids) for name, ids in eval_sets.items()}
  n = max(1, min(20, len(losses) // 5))
  metrics = {
      "before": before,
      "after": after,
      "loss_first": float(np.mean(losses[:n])),
      "loss_last": float(np.mean(losses[-n:])),
      "train_seconds": train_seconds,
      "steps_per_second": config.steps / train_seconds,
  }
  encoder = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(final["encoder"]))
  return _TrainResult(encoder, metrics)


# --------------------------------------------------------------------------
# The directory.


def is_complete(out_dir) -> bool:
  out_dir = pathlib.Path(out_dir)
  return all((out_dir / f).is_file() for f in COMPLETE_FILES)


def _saved_metrics(out_dir: pathlib.Path, config: PretrainConfig | None) -> dict:
  metrics = json.loads((out_dir / METRICS_FILE).read_text())
  if config is not None and metrics.get("config") != config.to_dict():
    saved = metrics.get("config") or {}
    diff = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
    raise ValueError(
        f"{out_dir} holds an encoder pretrained with another config (saved, asked): {diff}; "
        "use another directory or pass config=None to reuse it"
    )
  return metrics


def pretrain_encoder(out_dir, config: PretrainConfig | None = None) -> dict:
  """Pretrains and exports the encoder to ``out_dir``, or reuses a complete one.

  Args:
    out_dir: the Hugging Face directory to write (its parent must exist or is
      created). If it is already complete, its saved metrics are returned
      (ValueError if ``config`` is given and differs from the saved one).
    config: the `PretrainConfig` (default: ``PretrainConfig()``).

  Returns:
    The metrics also saved as ``pretrain_metrics.json``: held-out masked-token
    accuracy before/after training (all tokens, colour words, shape words),
    their chance levels, timings, and the config.
  """
  out_dir = pathlib.Path(out_dir)
  if is_complete(out_dir):
    return _saved_metrics(out_dir, config)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise FileExistsError(
        f"{out_dir} exists but is not a complete pretrained encoder (expected "
        f"{list(COMPLETE_FILES)}); remove it or choose another directory"
    )
  config = config or PretrainConfig()
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    metrics = _pretrain_into(tmp, config)
    try:
      os.replace(tmp, out_dir)  # an empty out_dir is replaced too
    except OSError:
      if not is_complete(out_dir):  # a concurrent run may have finished first
        raise
      return _saved_metrics(out_dir, config)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return metrics


def _pretrain_into(directory: pathlib.Path, config: PretrainConfig) -> dict:
  import sentencepiece  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(config.seed).spawn(5)]
  kw = dict(max_objects=config.max_objects, paraphrases=config.paraphrases)
  train_texts = caption_corpus(config.corpus_size, seeds[0], config.split, **kw)
  eval_texts = caption_corpus(config.eval_size, seeds[1], config.split, **kw)
  # Always holds a shapes.HELDOUT pair (one the paired "train" images never show).
  heldout_texts = caption_corpus(config.eval_size, seeds[2], "heldout", **kw)
  train_set = set(train_texts)
  unseen_texts = [t for t in eval_texts if t not in train_set]

  spm_path = directory / tokenizers.SPIECE_FILE
  spm_path.write_bytes(train_vocabulary(train_texts, config.vocab_size))
  sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
  tok = tokenizers.load_tokenizer(spm_path)  # what load_text_encoder will use
  colour_ids = _word_pieces(sp, shapes.COLOURS)
  shape_ids = _word_pieces(sp, shapes.SHAPES)
  vocab_size = sp.get_piece_size()
  t5_config = config.t5_config(vocab_size)
  pieces = [sp.id_to_piece(i) for i in range(vocab_size)]
  vocab = _Vocab(
      mask_id=sp.piece_to_id(MASK_PIECE),
      word_start=np.array([p.startswith("\u2581") for p in pieces]),
      content=np.array([not (sp.is_control(i) or sp.is_unknown(i)) for i in range(vocab_size)])
      & (np.arange(vocab_size) != sp.piece_to_id(MASK_PIECE)),
      colour_ids=tuple(colour_ids.values()),
      shape_ids=tuple(shape_ids.values()),
  )

  all_texts = train_texts + eval_texts + heldout_texts
  lengths = [len(ids) + 1 for ids in tok.content_ids(all_texts)]
  length = max(lengths)
  if length > config.max_length:
    raise ValueError(
        f"the corpus' longest text has {length} tokens with </s>, more than "
        f"PretrainConfig.max_length={config.max_length}; raise max_length or lower "
        "max_objects/paraphrases"
    )
  length = -(-length // 8) * 8
  ids = lambda texts: tokenizers.tokenize(tok, texts, length).ids
  eval_sets = {"eval": ids(eval_texts), "heldout_split": ids(heldout_texts)}
  if unseen_texts:
    eval_sets["eval_unseen_texts"] = ids(unseen_texts)
  init = builtin.random_params(t5_config, seeds[3], lambda n, a: a)
  params = checkpoints.unflatten(init)
  result = _train(t5_config, params, vocab, ids(train_texts), eval_sets, config, seeds[4])
  hf_export.save_hf_encoder(
      directory, t5_config, result.params, pad_id=tok.pad_id, eos_id=tok.eos_id
  )
  metrics = {
      **result.metrics,
      "chance": {"colour": 1.0 / len(shapes.COLOURS), "shape": 1.0 / len(shapes.SHAPES)},
      "vocab_size": vocab_size,
      "mask_id": vocab.mask_id,
      "sequence_length": length,
      "corpus_max_tokens": max(lengths),
      "eval_texts_in_train": 1.0 - len(unseen_texts) / max(len(eval_texts), 1),
      "total_seconds": time.perf_counter() - start,
      "config": config.to_dict(),
      "example_texts": eval_texts[:3],
  }
  (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
  return metrics
