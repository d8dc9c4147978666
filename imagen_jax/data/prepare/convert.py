"""`prepare(...)`: convert a source into one split of a TFDS ArrayRecord dataset.

The source's units (images, or tar files for webdataset; sorted) are cut
into `num_shards` contiguous blocks; output shard i holds block i, so any
process can convert any shard (`shard_index`) with no coordination and the
result does not depend on who ran what. Images are read and validated in
`num_workers` threads (I/O and PIL decoding release the GIL) and written in
the source's order. Unusable examples are skipped and counted by reason
(missing file, unreadable file - a FIFO, device or socket too -, corrupt image,
image too large - decoded size above `max_decoded_mb` -, no caption, no image,
bad caption, outside root - a listed path absolute or with '..' -, unsafe
member name - a tar member's -, corrupt tar); the first few of each shard are
kept in its done file.
A shard with a done file is not converted again; the metadata is written
once a split is complete (`writer.finalize`).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import time
from typing import Callable, Iterable, Iterator

from imagen_jax.data import preprocess
from imagen_jax.data.prepare import images
from imagen_jax.data.prepare import readers
from imagen_jax.data.prepare import writer
from imagen_jax.storage import paths

KEPT_SKIP_EXAMPLES = 5


@dataclasses.dataclass
class Summary:
  """What one `prepare` call did (this process's shards only)."""

  dataset_dir: str
  split: str
  written: int = 0
  reencoded: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  shards_converted: list = dataclasses.field(default_factory=list)
  shards_already_done: list = dataclasses.field(default_factory=list)
  complete_splits: dict = dataclasses.field(default_factory=dict)
  seconds: float = 0.0


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
  if workers <= 0:
    yield from map(fn, items)
    return
  window = 4 * workers
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _convert(
    item: readers.Item,
    max_side: int | None,
    features,
    max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
):
  """("ok", serialized, re-encoded, captions) or ("skip", reason, detail)."""
  if item.skip:
    return ("skip",) + item.skip
  try:
    data = item.load()
  except FileNotFoundError as e:
    return "skip", "missing file", f"{item.key}: {e}"
  except OSError as e:
    return "skip", "unreadable file", f"{item.key}: {e}"
  try:
    stored, reencoded = images.for_storage(data, item.key, max_side, max_decoded_mb)
  except preprocess.ImageTooLargeError as e:
    return "skip", "image too large", str(e)
  except preprocess.BadExampleError as e:
    return "skip", "corrupt image", str(e)
  record = features.serialize_example(
      {"image": stored, "caption": list(item.captions), "key": item.key}
  )
  return "ok", record, reencoded, list(item.captions)


def format_counts(counts: collections.Counter) -> str:
  return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _description(splits: dict) -> str:
  sources = "; ".join(
      f"{s}: {shards[0].get('source', '?')}" for s, shards in sorted(splits.items())
  )
  return f"Prepared by scripts/prepare_data.py ({sources})."


def finalize(output_dir: str, name: str, log: Callable = print) -> dict:
  """(Re)writes the metadata from the done files; returns the complete splits."""
  ds_dir = writer.dataset_dir(output_dir, name)
  splits = writer.complete_splits(writer.read_done(ds_dir))
  if splits:
    splits = writer.finalize(ds_dir, name, _description(splits))
  for split, shards in sorted(splits.items()):
    log(
        f"split {split}: complete, "
        f"{sum(d['num_examples'] for d in shards)} examples in "
        f"{len(shards)} shards"
    )
  return splits


def inputs_fingerprint(reader) -> str:
  """Identifies the partitioned inputs (their count and names), for resuming."""
  names = [u if isinstance(u, str) else u[0] for u in reader.units]
  digest = hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]
  return f"{len(names)}:{digest}"


def _check_resume(
    shards: dict, source: str, inputs: str, max_side: int | None, num_shards: int, split: str
) -> None:
  for index, done in sorted(shards.items()):
    if done["num_shards"] != num_shards:
      raise ValueError(
          f"split {split!r} was started with --num_shards "
          f"{done['num_shards']} (shard {index} is done), not {num_shards}"
      )
    if (done.get("inputs"), done.get("max_side")) != (inputs, max_side):
      raise ValueError(
          f"split {split!r} shard {index} was made from other inputs or "
          f"settings ({done.get('source')}, max_side={done.get('max_side')}) "
          f"than these ({source}, max_side={max_side}); use another --name "
          "or --split"
      )


def prepare(
    *,
    source: str,
    name: str,
    output_dir: str,
    split: str = "train",
    num_shards: int = 1,
    shard_index: int | None = None,
    max_side: int | None = None,
    num_workers: int = 8,
    log: Callable = print,
    max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
    **source_flags,
) -> Summary:
  """Converts shard `shard_index` (default: every shard) of `split`.

  `source_flags` are `open_reader`'s (path, annotations, images, manifest,
  allow_outside_root).
  """
  start = time.perf_counter()
  writer.check_name(name, split)
  if num_shards < 1:
    raise ValueError(f"--num_shards {num_shards} must be positive")
  if shard_index is not None and not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard_index {shard_index} not in [0, {num_shards})")
  if max_side is not None and max_side < 1:
    raise ValueError(f"--max_side {max_side} must be positive")
  try:
    max_decoded_mb = preprocess.check_max_decoded_mb(max_decoded_mb)
  except ValueError as e:
    raise ValueError(f"--{e}") from None
  if any(
      paths.is_remote(str(p))
      for p in (output_dir, *source_flags.values())
      if isinstance(p, str) and p
  ):
    paths.prefer_gcsfs()  # before TFDS or etils touch any path (see storage)
  ds_dir = writer.dataset_dir(output_dir, name)
  reader = readers.open_reader(source, **source_flags)
  units = reader.units
  if len(units) < num_shards:
    raise ValueError(
        f"{reader.name}: {len(units)} inputs cannot fill "
        f"--num_shards {num_shards} (a shard takes whole "
        "inputs: images, or tar files for webdataset)"
    )
  done = writer.read_done(ds_dir).get(split, {})
  inputs = inputs_fingerprint(reader)
  _check_resume(done, reader.name, inputs, max_side, num_shards, split)
  summary = Summary(dataset_dir=ds_dir, split=split)
  features = writer.features()
  todo = range(num_shards) if shard_index is None else [shard_index]
  for index in todo:
    label = f"{split} shard {index:05d}-of-{num_shards:05d}"
    if index in done:
      d = done[index]
      log(
          f"{label}: already done ({d['num_examples']} written, "
          f"{sum(d['skipped'].values())} skipped), skipping"
      )
      summary.shards_already_done.append(index)
      continue
    t0 = time.perf_counter()
    block = units[index * len(units) // num_shards : (index + 1) * len(units) // num_shards]
    shard = writer.ShardWriter(ds_dir, name, split, index, num_shards)
    skipped, examples, reencoded = collections.Counter(), [], 0
    try:
      for result in _ordered_map(
          lambda it: _convert(it, max_side, features, max_decoded_mb),
          reader.items(block),
          num_workers,
      ):
        if result[0] == "ok":
          shard.write(result[1], result[3])
          reencoded += bool(result[2])
        else:
          skipped[result[1]] += 1
          if len(examples) < KEPT_SKIP_EXAMPLES:
            examples.append({"reason": result[1], "detail": result[2]})
      d = shard.commit(
          {
              "source": reader.name,
              "inputs": inputs,
              "max_side": max_side,
              "num_shards": num_shards,
              "index": index,
              "skipped": dict(skipped),
              "skipped_examples": examples,
              "reencoded": reencoded,
          }
      )
    except BaseException:
      shard.abort()
      raise
    seconds = time.perf_counter() - t0
    if not d["num_examples"]:
      log(f"{label}: WARNING: empty, every one of its {len(block)} inputs was skipped")
    log(
        f"{label}: {d['num_examples']} written ({reencoded} re-encoded), "
        f"{sum(skipped.values())} skipped"
        + (f" ({format_counts(skipped)})" if skipped else "")
        + f", {seconds:.1f} s"
    )
    summary.written += d["num_examples"]
    summary.reencoded += reencoded
    summary.skipped.update(skipped)
    summary.shards_converted.append(index)
  summary.complete_splits = finalize(output_dir, name, log)
  if split not in summary.complete_splits:
    finished = set(writer.read_done(ds_dir).get(split, {}))
    missing = [i for i in range(num_shards) if i not in finished]
    log(
        f"split {split}: {num_shards - len(missing)} of {num_shards} shards "
        f"done; waiting for shard(s) {missing[:10]}" + ("..." if len(missing) > 10 else "")
    )
  else:
    log(f"train with: --config.input.dataset=tfds:{name} --config.input.data_dir={output_dir}")
  summary.seconds = time.perf_counter() - start
  rate = summary.written / summary.seconds if summary.seconds else 0.0
  log(
      f"this run: {summary.written} written, {sum(summary.skipped.values())} "
      "skipped"
      + (f" ({format_counts(summary.skipped)})" if summary.skipped else "")
      + f" in {summary.seconds:.1f} s ({rate:.1f} examples/s) -> {ds_dir}"
  )
  return summary
