"""Per-process input iterators for every cascade stage; checkpointable.

Entry point: `create_input_iterator(input_config, *, global_batch_size,
resolution, lowres_resolution=None, seed, ...)`. The iterator yields this
process's share of each global batch as a numpy dict (docs/interfaces.md):

* `image` uint8 [b, H, W, 3] (H = W = resolution, or `crop_size`);
* `lowres` uint8 [b, h, w, 3] for super-resolution stages: `image`
  downsampled to `lowres_resolution` (scaled like the crop when cropping);
* `caption` object array of str [b];
* `drop_text` bool [b]: caption dropout for classifier-free guidance; the
  trainer gives these examples the null text (zero embedding, empty mask);
* `text_emb` [b, L, D], `text_mask` bool [b, L] when a `text_cache` (any
  object with `get_many(captions) -> (emb, mask)`) is passed; rows are not
  nulled here, `drop_text` says which to null.

`input_config` fields read (ml_collections.ConfigDict or dict; defaults):
  dataset           "shapes" | "tfds:<name>" | "folder" | "coco_json" (shapes)
  split             TFDS split, or the shapes split "train"|"heldout"|"all"
                    ("train")
  data_dir          TFDS data_dir, local or gs:// (None: TFDS's default);
                    scripts/prepare_data.py writes datasets there
  download          let TFDS download and prepare the dataset (False)
  fields            {"image": path, "caption": path}: TFDS feature paths
                    ("captions/text") or manifest keys; default per dataset
  path              folder root (folder) or image folder (coco_json); local
                    or gs://
  manifest          JSONL/CSV manifest for "folder" (None: sidecar .txt files)
  annotations       COCO captions_*.json for "coco_json"
  max_objects       shapes world: objects per scene, 1-3 (3)
  labels            shapes world: also yield "labels" (scene_labels: first object's colour,
                    shape, size as int32 class indices), for the noise-aware classifier
  cond_drop_prob    caption dropout probability (0.1)
  crop              "centre" | "random" square crop after resizing ("centre")
  crop_size         train on random crop_size crops of the full-resolution
                    image, e.g. 256 for the 256->1024 stage (None)
  random_flip       horizontal flips; off because captions say left/right
  resize_method     "area" | "bilinear" | "bicubic" | "lanczos" ("area")
  shuffle           shuffle finite datasets, a new permutation per epoch (True)
  num_epochs        stop after this many passes (None: repeat forever)
  num_workers       background threads decoding/preprocessing (2; 0 = inline)
  prefetch_batches  batches prepared ahead (2)
  max_decoded_mb    refuse (skip and count) an image whose decoded size is
                    above this many MB, read from its header (256)
  bad_caption       a caption that is not UTF-8 or not readable: "skip" (count
                    it as a bad record) | "error" (stop, naming the file)
                    ("skip")
  allow_outside_root  read dataset-file paths (manifest entries, COCO
                    file_name) that are absolute or have '..'; refused and
                    counted as bad records otherwise (False)
  read_timeout_s    a record a worker thread has not read after this long
                    raises InputStalledError (a stalled file system) (300)

Bad records (corrupt, truncated, missing, oversized, not a regular file, a
bad caption, a path outside the root) are skipped and counted in
`num_skipped` (also in the iterator state); the trainer logs it as
`input/skipped_records`. A run where every record is bad is an error.

Design (why not grain or tf.data): ordering is a pure function of the seed.
The global stream is position g = 0, 1, 2, ...: a finite dataset of N records
reads record perm_e[g mod N] with e = g // N and perm_e a fresh seeded
permutation per epoch; the shapes world renders scene g. With b examples per
process and batch, process p of P reads, for its k = 0, 1, ..., position
g = (k // b) * bP + p * b + k % b: each global batch is a contiguous block of
the stream and process p holds its p-th slice, so the global batch the
processes assemble (process-major) is row for row the one-process batch, and
the row-keyed randomness of the step (noise, time) meets the same examples on
any number of hosts. Resuming on another process count continues the stream
at the first global batch not every old process had finished. Every
example's randomness (scene, caption choice, crop, dropout) comes from a
generator seeded with (seed, g), so it does not depend on the number of
workers, the prefetch depth or where a run was restarted. The iterator state
is then just the next k and the skip count (a tiny JSON dict for the training
checkpoint); restoring it replays exactly the batches an uninterrupted run
would have produced. Threads (PIL decoding and resizing release the GIL) with
an ordered prefetch queue keep loading off the training thread. grain offers
the same guarantees with more machinery (worker processes whose state
depends on their count, filter semantics for skipped records whose count is
not exposed); the infinite procedural source and the skip counter are simpler
this way, and nothing needs TensorFlow except building TFDS's coco_captions.
The worker threads are daemon threads: a read stuck in the kernel (a stalled
network file system) cannot keep the process from exiting, and the consumer
waits at most `read_timeout_s` for a record, so a SIGTERM'd trainer is not
held in `next()` forever either.
"""

import collections
import concurrent.futures
import logging
import math
import queue
import threading
import weakref
from typing import Any, Callable

import numpy as np

from imagen_jax import config_lib
from imagen_jax.data import preprocess as preprocess_lib

_STATE_VERSION = 2  # 2: contiguous per-batch layout, batch_size in the state
DEFAULT_READ_TIMEOUT_S = 300.0


class InputStalledError(TimeoutError):
  """A record was not read within `read_timeout_s` (its reader thread is left behind)."""


def check_read_timeout(value) -> float | None:
  """The read timeout in seconds (None: wait forever); ValueError naming a bad one."""
  if value is None:
    return None
  try:
    t = float(value)
  except (TypeError, ValueError):
    t = float("nan")
  if not (t > 0 and not math.isnan(t)):
    raise ValueError(
        f"read_timeout_s={value!r} must be a positive number of seconds "
        "(or None to wait forever)"
    )
  return t


class _DaemonPool:
  """A minimal thread pool of daemon threads (ThreadPoolExecutor's threads are joined at
  interpreter exit, so one read stuck in the kernel would keep the process alive)."""

  def __init__(self, num_workers: int):
    self._tasks: queue.SimpleQueue = queue.SimpleQueue()
    self._threads = num_workers
    for i in range(num_workers):
      threading.Thread(target=self._work, name=f"input_{i}", daemon=True).start()

  def _work(self) -> None:
    while True:
      task = self._tasks.get()
      if task is None:
        return
      future, fn, args = task
      if not future.set_running_or_notify_cancel():
        continue
      try:
        future.set_result(fn(*args))
      except BaseException as e:  # pylint: disable=broad-except  # re-raised by result()
        future.set_exception(e)

  def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._tasks.put((future, fn, args))
    return future

  def shutdown(self) -> None:
    """Idle threads end; a busy (or stuck) one ends after its task, or with the process."""
    for _ in range(self._threads):
      self._tasks.put(None)
    self._threads = 0


class InputIterator:
  """Deterministic, resumable, sharded iterator over preprocessed batches.

  Args:
    source: see `sources.py` (`name`, `num_records`, `read(index, rng)`).
    preprocess: maps (image, rng) to {"image", ["lowres"]}.
    batch_size: examples per batch on this process.
    seed: fixes the order and every example's randomness.
    process_index, process_count: this process's shard of the stream.
    shuffle: shuffle finite sources (a new permutation every epoch).
    cond_drop_prob: probability that an example's `drop_text` is True.
    num_epochs: stop after this many passes over a finite source.
    num_workers: threads loading examples (0: load on the calling thread).
    prefetch_batches: how many batches of examples are loaded ahead.
    text_cache: optional object with `get_many(captions) -> (emb, mask)`.
    read_timeout_s: with worker threads, how long to wait for one record before
      raising InputStalledError (None: forever).
  """

  def __init__(
      self,
      source,
      preprocess: Callable[..., dict],
      *,
      batch_size: int,
      seed: int,
      process_index: int = 0,
      process_count: int = 1,
      shuffle: bool = True,
      cond_drop_prob: float = 0.1,
      num_epochs: int | None = None,
      num_workers: int = 2,
      prefetch_batches: int = 2,
      text_cache: Any = None,
      read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if not 0.0 <= cond_drop_prob <= 1.0:
      raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
    if source.num_records is not None and source.num_records < 1:
      raise ValueError(f"{source.name}: the dataset is empty")
    self.source = source
    self.preprocess = preprocess
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.shuffle = shuffle
    self.cond_drop_prob = float(cond_drop_prob)
    self.num_epochs = num_epochs
    self.text_cache = text_cache
    self._window = max(1, int(prefetch_batches)) * self.batch_size
    self.read_timeout_s = check_read_timeout(read_timeout_s)
    self._executor = _DaemonPool(int(num_workers)) if num_workers > 0 else None
    if self._executor is not None:  # idle threads end with an unclosed iterator too
      weakref.finalize(self, self._executor.shutdown)
    self._perms: dict[int, np.ndarray] = {}
    self._pending: collections.deque = collections.deque()
    self._position = 0  # next local position k to yield
    self._submitted = 0  # next local position to submit
    self._num_skipped = 0
    self._logged_skips = 0
    self._first_skip = ""
    self._epoch = 0

  # -- Ordering ---------------------------------------------------------------

  def _global_position(self, k: int) -> int:
    b = self.batch_size
    return (k // b) * b * self.process_count + self.process_index * b + k % b

  def _end(self) -> int | None:
    """One past the last global position, or None when infinite."""
    n = self.source.num_records
    if n is None or self.num_epochs is None:
      return None
    return n * int(self.num_epochs)

  def _record(self, g: int) -> tuple[int, int]:
    n = self.source.num_records
    if n is None:
      return 0, g
    epoch, i = divmod(g, n)
    if not self.shuffle:
      return epoch, i
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n)
      self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e == epoch - 1}}
    return epoch, int(perm[i])

  # -- Loading ----------------------------------------------------------------

  def _load(self, k: int, g: int, index: int):
    rng = np.random.default_rng([self.seed, g])
    drop = bool(rng.random() < self.cond_drop_prob)
    try:
      image, caption, *extra = self.source.read(index, rng)
      example = self.preprocess(image, rng)
    except preprocess_lib.BadExampleError as e:
      return e
    for fields in extra:  # a source's per-record arrays beside the image (shapes labels)
      example.update(fields)
    example["caption"] = caption
    example["drop_text"] = drop
    return example

  def _fill(self) -> None:
    end = self._end()
    while len(self._pending) < self._window:
      k = self._submitted
      g = self._global_position(k)
      if end is not None and g >= end:
        return
      epoch, index = self._record(g)
      if self._executor is None:
        item = self._load(k, g, index)
      else:
        item = self._executor.submit(self._load, k, g, index)
      self._pending.append((k, epoch, item, g, index))
      self._submitted += 1

  def _result(self, future: concurrent.futures.Future, g: int, index: int):
    try:
      return future.result(timeout=self.read_timeout_s)
    except concurrent.futures.TimeoutError:
      raise InputStalledError(
          f"input {self.source.name}: record {index} (stream position {g}) was not read "
          f"within read_timeout_s={self.read_timeout_s:g} s; the storage may be "
          "stalled (the worker thread reading it is left behind; the run can resume "
          "from its last checkpoint)"
      ) from None

  def _next_example(self) -> dict | None:
    # "Every example is bad" once one run of bad reads has met every record, or (where this
    # process's view is a fixed subset, as unshuffled shards) is 10x the dataset long.
    # Counting the run alone is wrong: with half the records bad, two shuffled epochs can
    # put num_records bad ones in a row.
    in_a_row, bad_records = 0, set()
    while True:
      self._fill()
      if not self._pending:
        return None
      k, epoch, item, g, index = self._pending[0]
      if isinstance(item, concurrent.futures.Future):
        item = self._result(item, g, index)
      self._pending.popleft()
      self._position = k + 1
      if epoch != self._epoch:
        self._log_skips()
        self._epoch = epoch
      if not isinstance(item, preprocess_lib.BadExampleError):
        return item
      self._num_skipped += 1
      self._first_skip = self._first_skip or str(item)
      in_a_row += 1
      bad_records.add(index)
      num_records = self.source.num_records or float("inf")
      if len(bad_records) >= num_records or in_a_row >= 10 * num_records:
        raise ValueError(f"{self.source.name}: every example is bad (first: {self._first_skip})")

  def _log_skips(self) -> None:
    if self._num_skipped > self._logged_skips:
      logging.warning(
          "input %s: skipped %d bad example(s) so far (first: %s)",
          self.source.name,
          self._num_skipped,
          self._first_skip,
      )
      self._logged_skips = self._num_skipped

  # -- Iterator protocol --------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    examples = []
    while len(examples) < self.batch_size:
      example = self._next_example()
      if example is None:
        self._log_skips()
        raise StopIteration
      examples.append(example)
    batch = {
        key: np.stack([e[key] for e in examples])
        for key in examples[0]
        if key not in ("caption", "drop_text")
    }
    batch["caption"] = np.array([e["caption"] for e in examples], dtype=object)
    batch["drop_text"] = np.array([e["drop_text"] for e in examples], bool)
    if self.text_cache is not None:
      emb, mask = self.text_cache.get_many(list(batch["caption"]))
      batch["text_emb"] = np.asarray(emb)
      batch["text_mask"] = np.asarray(mask, bool)
    return batch

  @property
  def num_skipped(self) -> int:
    """Bad examples skipped so far (also in the state), for metrics."""
    return self._num_skipped

  def _identity(self) -> dict:
    return {
        "source": self.source.name,
        "seed": self.seed,
        "process_index": self.process_index,
        "process_count": self.process_count,
    }

  def get_state(self) -> dict:
    """JSON-serialisable position; `set_state` on a fresh iterator resumes."""
    return {
        "version": _STATE_VERSION,
        "position": self._position,
        "num_skipped": self._num_skipped,
        "batch_size": self.batch_size,
        **self._identity(),
    }

  def reshard_state(self, states: list) -> dict:
    """This process's state from the states of every process of a run with another process
    count: the stream resumes at the first global batch some old process had not finished
    (bad examples skipped unevenly, or a changed global batch, re-read a few examples)."""
    if any(st.get("version") != _STATE_VERSION for st in states):
      raise ValueError("input states of another version cannot be resharded")
    next_g = min(
        st["position"] // st["batch_size"] * st["batch_size"] * len(states) for st in states
    )
    global_batch = self.batch_size * self.process_count
    if next_g % global_batch or any(st["position"] % st["batch_size"] for st in states):
      logging.warning(
          "input %s: resharding %d processes' states to %d: the old processes "
          "stopped mid-batch or at other batch sizes; a few examples are read "
          "again",
          self.source.name,
          len(states),
          self.process_count,
      )
    return {
        "version": _STATE_VERSION,
        "position": next_g // global_batch * self.batch_size,
        "num_skipped": sum(int(st["num_skipped"]) for st in states),
        "batch_size": self.batch_size,
        **self._identity(),
    }

  def set_state(self, state: dict) -> None:
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"unsupported input state version {state.get('version')}")
    mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
    if mismatched:
      raise ValueError(f"input state is from a different pipeline (saved, current): {mismatched}")
    for _, _, item, _, _ in self._pending:
      if isinstance(item, concurrent.futures.Future):
        item.cancel()
    self._pending.clear()
    self._position = self._submitted = int(state["position"])
    self._num_skipped = self._logged_skips = int(state["num_skipped"])
    self._epoch = (
        self._record(self._global_position(self._position))[0]
        if (self.source.num_records is not None)
        else 0
    )

  def close(self) -> None:
    self._log_skips()
    if self._executor is not None:
      for _, _, item, _, _ in self._pending:
        if isinstance(item, concurrent.futures.Future):
          item.cancel()
      self._executor.shutdown()
      self._executor = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# The `input_config.dataset` names `make_source` takes, besides "tfds:<name>"
# (config_check validates configs against them).
DATASETS = ("shapes", "folder", "coco_json")


def make_source(input_config, render_size: int):
  """The source named by `input_config.dataset` (see the module docstring).

  `render_size` is the stage resolution: the shapes world renders at it and
  file sources may decode JPEGs at a reduced scale that stays above it.
  """
  from imagen_jax.data import sources

  dataset = config_lib.get(input_config, "dataset", "shapes")
  split = config_lib.get(input_config, "split", "train")
  fields = dict(config_lib.get(input_config, "fields", {}) or {})
  max_mb = preprocess_lib.check_max_decoded_mb(
      config_lib.get(input_config, "max_decoded_mb", preprocess_lib.DEFAULT_MAX_DECODED_MB)
  )
  bad_caption = sources.check_bad_caption(config_lib.get(input_config, "bad_caption", "skip"))
  outside = config_lib.get(input_config, "allow_outside_root", False)
  if not isinstance(outside, bool):
    raise ValueError(f"allow_outside_root={outside!r} must be True or False")
  if dataset == "shapes":
    return sources.ShapesSource(
        render_size,
        split,
        int(config_lib.get(input_config, "max_objects", 3)),
        labels=bool(config_lib.get(input_config, "labels", False)),
    )
  if dataset.startswith("tfds:"):
    return sources.TfdsSource(
        dataset[len("tfds:") :],
        split=split,
        data_dir=config_lib.get(input_config, "data_dir"),
        fields=fields,
        download=bool(config_lib.get(input_config, "download", False)),
        min_side=render_size,
        max_decoded_mb=max_mb,
        bad_caption=bad_caption,
    )
  if dataset == "folder":
    from imagen_jax.data import folder_source

    return folder_source.FolderSource(
        config_lib.get(input_config, "path", ""),
        config_lib.get(input_config, "manifest"),
        image_key=fields.get("image", "image"),
        caption_key=fields.get("caption", "caption"),
        min_side=render_size,
        max_decoded_mb=max_mb,
        bad_caption=bad_caption,
        allow_outside_root=outside,
    )
  if dataset == "coco_json":
    from imagen_jax.data import folder_source

    return folder_source.CocoJsonSource(
        config_lib.get(input_config, "annotations"),
        config_lib.get(input_config, "path"),
        min_side=render_size,
        max_decoded_mb=max_mb,
        allow_outside_root=outside,
    )
  raise ValueError(
      f"unknown input dataset {dataset!r}; expected 'shapes', "
      "'tfds:<name>', 'folder' or 'coco_json'"
  )


def local_batch_size(global_batch_size: int, process_count: int, devices_per_process: int) -> int:
  """global / processes; ValueError unless it divides over all devices."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global batch size {global_batch_size} does not divide over {process_count} processes"
    )
  local = global_batch_size // process_count
  if local % devices_per_process:
    raise ValueError(
        f"global batch size {global_batch_size} does not divide over "
        f"{process_count} processes x {devices_per_process} devices"
    )
  return local


def create_input_iterator(
    input_config,
    *,
    global_batch_size: int,
    resolution: int,
    lowres_resolution: int | None = None,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    devices_per_process: int | None = None,
    text_cache: Any = None,
) -> InputIterator:
  """This process's iterator for one stage; see the module docstring.

  process_index / process_count / devices_per_process default to JAX's
  (`jax.process_index()`, `jax.process_count()`, `jax.local_device_count()`).
  """
  if process_index is None or process_count is None or (devices_per_process is None):
    import jax

    process_index = jax.process_index() if process_index is None else (process_index)
    process_count = jax.process_count() if process_count is None else (process_count)
    devices_per_process = (
        jax.local_device_count() if (devices_per_process is None) else devices_per_process
    )
  batch = local_batch_size(global_batch_size, process_count, devices_per_process)
  stage = preprocess_lib.StagePreprocess(
      resolution=int(resolution),
      lowres_resolution=lowres_resolution,
      crop=config_lib.get(input_config, "crop", "centre"),
      crop_size=config_lib.get(input_config, "crop_size"),
      random_flip=bool(config_lib.get(input_config, "random_flip", False)),
      resize_method=config_lib.get(input_config, "resize_method", "area"),
  )
  source = make_source(input_config, render_size=int(resolution))
  return InputIterator(
      source,
      stage,
      batch_size=batch,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      shuffle=bool(config_lib.get(input_config, "shuffle", True)),
      cond_drop_prob=float(config_lib.get(input_config, "cond_drop_prob", 0.1)),
      num_epochs=config_lib.get(input_config, "num_epochs"),
      num_workers=int(config_lib.get(input_config, "num_workers", 2)),
      prefetch_batches=int(config_lib.get(input_config, "prefetch_batches", 2)),
      text_cache=text_cache,
      read_timeout_s=config_lib.get(input_config, "read_timeout_s", DEFAULT_READ_TIMEOUT_S),
  )
