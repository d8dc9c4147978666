r"""imagen-pytorch's side of `scripts/benchmark.py`, in its own process (torch only).

  python benchmarks/peer_imagen_pytorch.py --spec SPEC.json --out PEER.json [--device cuda]

SPEC.json comes from `imagen_jax.perf.peer_spec.spec` (written by scripts/benchmark.py).
Measures, as our side does: the steady-state train step (forward + backward + gradient
clipping + optimizer + EMA update, text embeddings passed with `text_embeds=`, no T5),
median over repeats of a block of steps with the device synchronised; parameter count; FLOPs
of one step (torch.utils.flop_counter: matmuls and convolutions, forward + backward); peak
device memory (CUDA); and sampling (imagen-pytorch's ancestral sampler over `sample_steps`
steps) unguided (cond_scale 1) and guided, unless the spec says `"sample": false`. PEER.json is
written after the train figures and again after sampling, so a run stopped while sampling
keeps its train figures.

Needs `pip install -r requirements-bench.txt` (imagen-pytorch 2.1.0 and a torchvision that
matches torch). Works offline: imagen-pytorch looks up `google/t5-v1_1-base`'s config when it
is imported, so this script points Hugging Face at a private cache holding that config alone
(the T5 itself is never used).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

# google/t5-v1_1-base's published config (what imagen-pytorch's import-time lookup reads).
_T5_BASE_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"],
    "d_ff": 2048,
    "d_kv": 64,
    "d_model": 768,
    "decoder_start_token_id": 0,
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_decoder_layers": 12,
    "num_heads": 12,
    "num_layers": 12,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}


def _offline_hf_cache() -> str:
  """A Hugging Face cache holding only google/t5-v1_1-base's config.json; set offline."""
  root = tempfile.mkdtemp(prefix="peer_hf_")
  repo = os.path.join(root, "hub", "models--google--t5-v1_1-base")
  revision = "0" * 40
  os.makedirs(os.path.join(repo, "snapshots", revision))
  os.makedirs(os.path.join(repo, "refs"))
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(revision)
  with open(os.path.join(repo, "snapshots", revision, "config.json"), "w") as f:
    json.dump(_T5_BASE_CONFIG, f)
  os.environ["HF_HOME"] = root
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  return root


def _datasets_stand_in() -> str | None:
  """imagen-pytorch's package import reaches `imagen_pytorch.data`, which imports Hugging Face
  `datasets` for one helper (a user-agent string for URL downloads) that the benchmark never
  calls. Where `datasets` is missing, that helper alone is provided; returns a note saying so."""
  try:
    import datasets.utils.file_utils  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import

    return None
  except ImportError:
    pass
  import types  # pylint: disable=import-outside-toplevel

  names = ("datasets", "datasets.utils", "datasets.utils.file_utils")
  modules = {name: types.ModuleType(name) for name in names}
  modules["datasets.utils.file_utils"].get_datasets_user_agent = (
      lambda *args, **kwargs: "imagen-pytorch-benchmark"
  )
  modules["datasets"].utils = modules["datasets.utils"]
  modules["datasets.utils"].file_utils = modules["datasets.utils.file_utils"]
  sys.modules.update(modules)
  return "datasets not installed: imagen_pytorch.data's get_datasets_user_agent stood in"


def _median(call, sync, repeats, inner):
  times = []
  for _ in range(repeats):
    sync()
    start = time.perf_counter()
    for _ in range(inner):
      call()
    sync()
    times.append((time.perf_counter() - start) / inner)
  return statistics.median(times), times


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--spec", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
  parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
  args = parser.parse_args()
  with open(args.spec) as f:
    spec = json.load(f)

  _offline_hf_cache()
  datasets_note = _datasets_stand_in()
  import torch  # pylint: disable=import-outside-toplevel
  import imagen_pytorch  # pylint: disable=import-outside-toplevel
  from ema_pytorch import EMA  # pylint: disable=import-outside-toplevel
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel

  if args.threads:
    torch.set_num_threads(args.threads)
  device = torch.device(
      ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
  )
  cuda = device.type == "cuda"
  if cuda:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  bf16 = spec["precision"] == "bf16"
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

  torch.manual_seed(0)
  unet_kw = dict(spec["unet"])
  for key in ("dim_mults", "num_resnet_blocks", "layer_attns", "layer_cross_attns"):
    if isinstance(unet_kw.get(key), list):
      unet_kw[key] = tuple(unet_kw[key])
  unet = imagen_pytorch.Unet(**unet_kw)
  sizes = spec["imagen"]["image_sizes"]
  sr = len(sizes) == 2
  unets = (imagen_pytorch.NullUnet(), unet) if sr else unet
  imagen_kw = {k: v for k, v in spec["imagen"].items() if k != "image_sizes"}
  imagen = imagen_pytorch.Imagen(
      unets=unets,
      image_sizes=tuple(sizes) if sr else sizes[0],
      timesteps=int(spec["sample_steps"]),
      **imagen_kw,
  ).to(device)
  unet_number = 2 if sr else 1
  unet = imagen.unets[unet_number - 1]  # Imagen may rebuild the Unet (lowres_cond, channels)
  params = sum(p.numel() for p in unet.parameters())

  b, length, dim = spec["batch_size"], spec["text_len"], spec["imagen"]["text_embed_dim"]
  res = sizes[-1]
  gen = torch.Generator().manual_seed(0)

  def text(n):
    emb = torch.randn(n, length, dim, generator=gen).to(device)
    lengths = torch.randint(1, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    return emb, mask

  images = (torch.rand(b, 3, res, res, generator=gen) * 2 - 1).to(device)
  emb, mask = text(b)
  images01 = (images + 1) / 2  # imagen-pytorch normalises [0, 1] -> [-1, 1] itself

  o = spec["optimizer"]
  opt_cls = {
      "adam": torch.optim.Adam,
      "adamw": torch.optim.AdamW,
      "adafactor": getattr(torch.optim, "Adafactor", None),
  }.get(o["name"])
  if opt_cls is None:
    raise ValueError(f"optimizer {o['name']!r} has no torch counterpart in this torch")
  opt = opt_cls(unet.parameters(), lr=o["lr"])
  ema = EMA(unet, beta=o["ema_decay"], update_after_step=0, update_every=1)
  imagen.train()

  def train_step():
    with autocast():
      loss = imagen(images01, text_embeds=emb, text_masks=mask, unet_number=unet_number)
    loss.backward()
    if o["grad_clip_norm"] > 0:
      torch.nn.utils.clip_grad_norm_(unet.parameters(), o["grad_clip_norm"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update()
    return loss

  for _ in range(2):
    train_step()
  sync()
  with FlopCounterMode(display=False) as counter:
    train_step()
  step_flops = counter.get_total_flops()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  seconds, times = _median(train_step, sync, spec["repeats"], spec["inner"])
  loss = float(train_step().detach().float())
  out = {
      "peer": spec["peer"],
      "peer_version": imagen_pytorch.__version__,
      "torch": torch.__version__,
      "device": str(device),
      "device_kind": torch.cuda.get_device_name(device) if cuda else "cpu",
      "threads": torch.get_num_threads(),
      "precision": spec["precision"],
      "optimizer": o["name"],
      "params": params,
      "batch_size": b,
      "step_seconds": seconds,
      "step_seconds_all": times,
      "img_per_s": b / seconds,
      "flops_per_step": step_flops,
      "flops_per_image": step_flops / b,
      "flops_counter": "torch.utils.flop_counter (matmul + conv, fwd + bwd)",
      "peak_device_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
      "loss": loss,
  }
  if datasets_note:
    out["note"] = datasets_note
  out["host_peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
  _write(out, args.out)  # the train figures survive a timeout during sampling
  if not spec.get("sample", True):
    return

  sb, steps = spec["sample_batch_size"], spec["sample_steps"]
  s_emb, s_mask = text(sb)
  lowres = torch.rand(sb, 3, sizes[0], sizes[0], generator=gen).to(device) if sr else None
  imagen.eval()
  sampling = {"batch_size": sb, "num_steps": steps, "guidance_scale": spec["guidance_scale"]}
  for name, scale in (("unguided", 1.0), ("guided", spec["guidance_scale"])):

    def sample(scale=scale):
      with torch.no_grad(), autocast():
        kw = (
            dict(start_at_unet_number=2, start_image_or_video=lowres, stop_at_unet_number=2)
            if sr
            else {}
        )
        return imagen.sample(
            text_embeds=s_emb,
            text_masks=s_mask,
            cond_scale=scale,
            batch_size=sb,
            use_tqdm=False,
            cfg_remove_parallel_component=False,
            **kw,
        )

    sample()  # warm-up (cuDNN autotuning)
    sec, _ = _median(sample, sync, max(1, spec["repeats"] // 2), 1)
    sampling[name] = {"seconds": sec, "step_seconds": sec / steps, "img_per_s": sb / sec}
  sampling["guided_over_unguided_step"] = (
      sampling["guided"]["step_seconds"] / sampling["unguided"]["step_seconds"]
  )
  out["sampling"] = sampling
  out["host_peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
  _write(out, args.out)


def _write(out: dict, path: str) -> None:
  """Atomically (write, then rename), so a run stopped mid-write leaves the last whole file."""
  with open(path + ".tmp", "w") as f:
    json.dump(out, f, indent=2)
  os.replace(path + ".tmp", path)
  print(
      json.dumps({k: out[k] for k in ("params", "img_per_s", "step_seconds")}),
      file=sys.stderr,
      flush=True,
  )


if __name__ == "__main__":
  main()
