"""The cascade sampler: text -> base -> SR -> SR, from trained stage workdirs.

Each stage's workdir holds its Orbax checkpoints and the config it trained
with (saved inside every checkpoint), so a stage is rebuilt from the workdir
alone. Prompts are encoded once per distinct text encoder, then each stage
samples with its own settings (sampler, steps, guidance scale, thresholding,
and for SR stages the noise-augmentation level of the low-res input). The
batch is sharded over all devices (params replicated); results depend only
on the prompts, the seed and the settings.
"""

import dataclasses
import logging
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.core import meta
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from imagen_jax import diffusion
from imagen_jax import pipeline as pipeline_lib
from imagen_jax import text as text_lib
from imagen_jax.sampling import edit as edit_lib
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train.metrics import to_uint8


@dataclasses.dataclass(frozen=True)
class StageSettings:
  """How one stage samples; `aug_level` applies to SR stages only."""

  sampler: str = "ddpm"
  num_steps: int = 64
  guidance_scale: float = 1.0
  threshold: str = "dynamic"
  percentile: float = diffusion.DEFAULT_PERCENTILE
  max_value: float | None = None
  aug_level: float = 0.0
  time_grid: str | None = None  # None: the sampler's default (diffusion.sample)

  def validate(self, where: str = "stage"):
    if self.sampler not in diffusion.SAMPLERS:
      raise ValueError(
          f"{where}: unknown sampler {self.sampler!r}; allowed: {', '.join(diffusion.SAMPLERS)}"
      )
    if self.threshold not in diffusion.THRESHOLDS:
      raise ValueError(
          f"{where}: unknown threshold {self.threshold!r}; "
          f"allowed: {', '.join(diffusion.THRESHOLDS)}"
      )
    if self.guidance_scale < 0:
      raise ValueError(
          f"{where}: guidance_scale={self.guidance_scale} must be >= 0 (1 = no guidance)"
      )
    if int(self.num_steps) < 1:
      raise ValueError(f"{where}: num_steps={self.num_steps} must be >= 1")
    if self.time_grid is not None and self.time_grid not in diffusion.TIME_GRIDS:
      raise ValueError(
          f"{where}: unknown time_grid {self.time_grid!r}; "
          f"allowed: {', '.join(diffusion.TIME_GRIDS)}"
      )
    if not 0.0 <= self.aug_level <= 1.0:
      raise ValueError(f"{where}: aug_level={self.aug_level} must be in [0, 1]")
    return self

  @classmethod
  def from_config(cls, sampling_config, **overrides):
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in dict(sampling_config).items() if k in fields}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**kw)


@dataclasses.dataclass
class Stage:
  """A trained stage: its config, pipeline and (EMA) params."""

  workdir: str
  config: Any
  pipeline: pipeline_lib.StagePipeline
  params: Any
  step: int


def restore_run(
    workdir: str, abstract_params_fn, *, step=None, use_ema=True, train_hint="train the stage first"
):
  """(config, params, step) of a training run's checkpoint (EMA params by default);
  `abstract_params_fn(config)` gives the params' abstract tree (and may refuse the config)."""
  try:
    ckpt, at = ckpt_lib.checkpointer_at(workdir)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{workdir!r} has no checkpoints/ directory: {train_hint} (scripts/train.py --workdir ...)"
    ) from None
  try:
    step = at if step is None else step
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir!r} has no finished checkpoint")
    config = ml_collections.ConfigDict(ckpt.restore_config(step))
    abstract = abstract_params_fn(config)
    params = ckpt.restore_params(step, abstract, field="ema_params" if use_ema else "params")
  finally:
    ckpt.close()
  return config, params, int(step)


def restore_task_run(
    workdir, task: str, build, dummy_inputs, *, not_what: str, step=None, use_ema=True, train_hint
):
  """(build(config), config, params, step) of a run whose `config.task` is `task` (the
  classifier, the noise-aware CLIP, the unCLIP prior): `build(config)` gives the model (or a
  tuple starting with it), `dummy_inputs(model)` its init arguments. ValueError, "holds a
  config.task=... run, not {not_what}", for a run of another task."""
  built = []

  def abstract(config):
    if config.get("task") != task:
      raise ValueError(
          f"{str(workdir)!r} holds a config.task={config.get('task', 'diffusion')!r} run, not "
          f"{not_what}"
      )
    built.append(build(config))
    model = built[0][0] if isinstance(built[0], tuple) else built[0]
    return jax.eval_shape(
        lambda: meta.unbox(model.init(jax.random.PRNGKey(0), *dummy_inputs(model))["params"])
    )

  config, params, step = restore_run(
      str(workdir), abstract, step=step, use_ema=use_ema, train_hint=train_hint
  )
  return built[0], config, params, step


def load_stage(workdir: str, *, step: int | None = None, use_ema: bool = True) -> Stage:
  """Rebuilds a stage from its workdir's checkpoint (EMA params by default)."""
  pipes = []

  def abstract(config):
    pipes.append(pipeline_lib.StagePipeline.from_config(config))
    return jax.eval_shape(lambda: meta.unbox(pipes[0].init(jax.random.PRNGKey(0))["params"]))

  config, params, step = restore_run(workdir, abstract, step=step, use_ema=use_ema)
  return Stage(str(workdir), config, pipes[0], params, step)


def check_chain(stages: Sequence[Stage]):
  """Raises unless each SR stage's low-res input is the previous output."""
  if not stages:
    raise ValueError("a cascade needs at least one stage")
  if stages[0].pipeline.is_super_resolution:
    raise ValueError(
        f"the first stage ({stages[0].workdir}) is a "
        "super-resolution stage; it needs a base stage before it"
    )
  for prev, cur in zip(stages, stages[1:]):
    if not cur.pipeline.is_super_resolution:
      raise ValueError(
          f"stage {cur.workdir} is a base stage but follows "
          f"{prev.workdir}; only the first stage may be a base"
      )
    if cur.pipeline.lowres_resolution != prev.pipeline.resolution:
      raise ValueError(
          f"stages do not chain: {prev.workdir} outputs "
          f"{prev.pipeline.resolution}x{prev.pipeline.resolution} but "
          f"{cur.workdir} expects a {cur.pipeline.lowres_resolution}x"
          f"{cur.pipeline.lowres_resolution} low-res input"
      )


class CascadeSampler:
  """Samples 1-3 chained stages for a list of prompts (each stage with the text encoder
  saved in its config, or all with `text_encoder`)."""

  def __init__(
      self,
      stages: Sequence[Stage],
      settings: Sequence[StageSettings] | None = None,
      *,
      batch_size: int = 16,
      devices=None,
      text_encoder: str | None = None,
  ):
    """`text_encoder` (a built-in name, or a local or `gs://` T5 directory) replaces the
    encoder saved in every stage's config; its width is checked against each stage's
    model here, before anything is loaded or compiled."""
    check_chain(stages)
    self.stages = list(stages)
    self.text_encoder = text_encoder
    if text_encoder is not None:
      for i, s in enumerate(self.stages):
        spec = text_lib.describe_encoder(text_encoder, max_length=s.config.text.get("max_length"))
        if spec.dim != s.pipeline.model.text_dim:
          raise ValueError(
              f"--text_encoder {text_encoder!r} gives {spec.dim}-dim embeddings but stage "
              f"{i} ({s.workdir}) was trained with text_dim="
              f"{s.pipeline.model.text_dim} (encoder {s.config.text.encoder!r})"
          )
    if settings is None:
      settings = [StageSettings.from_config(s.config.sampling) for s in stages]
    if len(settings) != len(stages):
      raise ValueError(f"{len(settings)} stage settings for {len(stages)} stages")
    self.settings = [
        st.validate(f"stage {i} ({s.workdir})") for i, (s, st) in enumerate(zip(stages, settings))
    ]
    devices = jax.devices() if devices is None else devices
    self.mesh = Mesh(np.asarray(devices), ("data",))
    n = len(devices)
    self.batch_size = max(n, -(-int(batch_size) // n) * n)
    self._encoders = {}
    self._replicated = NamedSharding(self.mesh, P())
    self._params = [jax.device_put(s.params, self._replicated) for s in stages]
    self._fns = {}
    self._guide_params = {}

  @classmethod
  def from_workdirs(
      cls, workdirs: Sequence[str], settings: Sequence[StageSettings] | None = None, **kw
  ) -> "CascadeSampler":
    return cls([load_stage(w) for w in workdirs], settings, **kw)

  def encoder(self, i):
    name = self.text_encoder or self.stages[i].config.text.encoder
    max_length = self.stages[i].config.text.get("max_length")
    key = (name, max_length)
    if key not in self._encoders:
      self._encoders[key] = text_lib.load_text_encoder(name, max_length=max_length)
    enc = self._encoders[key]
    if enc.dim != self.stages[i].pipeline.model.text_dim:
      raise ValueError(
          f"stage {i}: encoder {name!r} gives {enc.dim}-dim "
          "embeddings, the model expects "
          f"{self.stages[i].pipeline.model.text_dim}"
      )
    return enc

  def _fn(self, i, st: StageSettings, guide=None, edit_key=None):
    """The jitted sampler of stage i; the guidance scales (CFG and the guide's) and the edit's
    image and mask are traced, so all guided scales and all images share one compilation.
    `edit_key`: `Edit.static_key` (inpainting, strength, resample, paste), or None."""
    guided = pipeline_lib.is_guided(float(st.guidance_scale))
    key = (
        guide,
        i,
        st.sampler,
        int(st.num_steps),
        st.threshold,
        float(st.percentile),
        st.max_value,
        float(st.aug_level),
        st.time_grid,
        guided,
        edit_key,
    )
    if key not in self._fns:
      pipe = self.stages[i].pipeline

      def run(
          params,
          emb,
          mask,
          lowres,
          rng,
          scale,
          guide_params,
          guide_cond,
          guide_scale,
          image,
          keep,
          image_embed,
      ):
        steer = None
        if guide is not None:
          steer = guide.steer(guide_params, guide_cond, guide_scale)
        edit_kw = {}
        if edit_key is not None:
          inpaint, strength, resample, paste = edit_key
          if inpaint:
            edit_kw.update(known=image, mask=keep, resample=resample, paste_known=paste)
          if strength is not None:
            edit_kw.update(init=image, start_t=strength)
        images = pipe.sample(
            params,
            emb,
            mask,
            rng,
            sampler=st.sampler,
            num_steps=int(st.num_steps),
            guidance_scale=scale if guided else 1.0,
            threshold=st.threshold,
            percentile=float(st.percentile),
            max_value=st.max_value,
            lowres=lowres,
            aug_level=float(st.aug_level),
            time_grid=st.time_grid,
            steer=steer,
            image_embed=image_embed,
            **edit_kw,
        )
        return jnp.clip(images, -1.0, 1.0)

      self._fns[key] = jax.jit(run, out_shardings=NamedSharding(self.mesh, P("data")))
    return self._fns[key]

  def sample(
      self,
      prompts: Sequence[str],
      seed: int = 0,
      *,
      settings: Sequence[StageSettings] | None = None,
      progress: bool = True,
      guide=None,
      guide_scale: float = 0.0,
      edit: edit_lib.Edit | None = None,
      image_embed=None,
  ) -> list:
    """Images of every stage for `prompts`: a list of uint8 [N, H, W, 3].

    `settings` overrides the sampler's per-stage settings for this call. `guide` (e.g.
    `sampling.guides.ClassifierGuide`) steers the base stage with `guide_scale` (0: off):
    `guide.conditions(prompts)` on the host, `guide.steer(params, conditions, scale)` in
    the jitted sampler, after classifier-free guidance. `edit` (`sampling.Edit`) inpaints
    and/or SDEdits the base stage (sampling/edit.py); the SR stages upsample its output.
    `image_embed` [N, D]: the CLIP image embeddings an unCLIP decoder stage 0 decodes (from
    the prior, `sampling.unclip`, or of images for variations), one per prompt.
    """
    if settings is None:
      settings = self.settings
    elif len(settings) != len(self.stages):
      raise ValueError(f"{len(settings)} stage settings for {len(self.stages)} stages")
    else:
      settings = [st.validate(f"stage {i}") for i, st in enumerate(settings)]
    prompts = [str(p) for p in prompts]
    if not prompts:
      raise ValueError("no prompts to sample")
    n, bs = len(prompts), self.batch_size
    padded = prompts + [prompts[-1]] * (-n % bs)
    guide_cond, guide_params = None, None
    if guide is not None and _check_guide_scale(guide_scale):
      guide.check_stage(self.stages[0].pipeline.resolution, f"stage 0 ({self.stages[0].workdir})")
      guide_cond = np.asarray(guide.conditions(padded))
      if id(guide) not in self._guide_params:
        self._guide_params = {id(guide): jax.device_put(guide.params, self._replicated)}
      guide_params = self._guide_params[id(guide)]
    else:
      guide = None
    edit_image = edit_keep = None
    if edit is not None:
      if not edit.paste and not self.stages[0].pipeline.is_inpainting:
        raise ValueError(
            f"Edit.paste=False: stage 0 ({self.stages[0].workdir}) is not an inpainting "
            "stage (it does not see the known pixels; train one with "
            "configs/shapes.py:stage=inpaint or configs/base64.py:inpaint=True)"
        )
      edit_image, edit_keep = edit.arrays(
          self.stages[0].pipeline.resolution, n, f"stage 0 ({self.stages[0].workdir})"
      )
      edit_image, edit_keep = (_pad_rows(a, len(padded)) for a in (edit_image, edit_keep))
    decoder_dim = self.stages[0].pipeline.image_embed_dim
    if decoder_dim and image_embed is None:
      raise ValueError(
          f"stage 0 ({self.stages[0].workdir}) is an unCLIP decoder: pass image_embed "
          f"[{n}, {decoder_dim}] (from the prior, or of images for variations)"
      )
    if image_embed is not None:
      image_embed = np.asarray(image_embed, np.float32)
      if not decoder_dim:
        raise ValueError(
            f"image_embed given but stage 0 ({self.stages[0].workdir}) is not a decoder "
            "(image_embed_dim=0)"
        )
      if image_embed.shape != (n, decoder_dim):
        raise ValueError(
            f"image_embed of shape {list(image_embed.shape)}: stage 0 ({self.stages[0].workdir}) "
            f"decodes [{n}, {decoder_dim}] (one embedding per prompt, image_embed_dim="
            f"{decoder_dim})"
        )
      image_embed = _pad_rows(image_embed, len(padded))
    batch_sharding = NamedSharding(self.mesh, P("data"))
    outputs, lowres_all = [], None
    rng = jax.random.PRNGKey(int(seed))
    for i, stage in enumerate(self.stages):
      enc = self.encoder(i)
      chunks = range(0, len(padded), bs)
      bar = _progress(len(chunks), f"stage {i} {stage.pipeline.resolution}px", progress)
      results = []
      start = time.perf_counter()
      for c, lo in enumerate(chunks):
        emb, mask = enc.encode(padded[lo : lo + bs])
        emb, mask = jax.device_put((emb, mask), batch_sharding)
        low = None
        if lowres_all is not None:
          low = jax.device_put(jnp.asarray(lowres_all[lo : lo + bs]), batch_sharding)
        key = jax.random.fold_in(jax.random.fold_in(rng, i), c)
        g = guide if i == 0 else None
        cond = None
        if g is not None:
          cond = jax.device_put(jnp.asarray(guide_cond[lo : lo + bs]), batch_sharding)
        e = edit if i == 0 else None
        image = keep = None
        if e is not None:
          image = jax.device_put(edit_image[lo : lo + bs], batch_sharding)
          if edit_keep is not None:
            keep = jax.device_put(edit_keep[lo : lo + bs], batch_sharding)
        z = None
        if i == 0 and image_embed is not None:
          z = jax.device_put(image_embed[lo : lo + bs], batch_sharding)
        fn = self._fn(i, settings[i], g, None if e is None else e.static_key)
        out = fn(
            self._params[i],
            emb,
            mask,
            low,
            key,
            jnp.float32(settings[i].guidance_scale),
            guide_params if g is not None else None,
            cond,
            jnp.float32(guide_scale),
            image,
            keep,
            z,
        )
        results.append(np.asarray(jax.device_get(out)))
        bar.update(1)
      bar.close()
      images = np.concatenate(results)
      logging.info("stage %d: %d images in %.1fs", i, len(images), time.perf_counter() - start)
      lowres_all = images
      outputs.append(to_uint8(images[:n]))
    return outputs


def _pad_rows(a, rows):
  """`a` [n, ...] with its last row repeated to `rows` rows (as the prompts are padded)."""
  if a is None:
    return None
  return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


def _check_guide_scale(scale) -> bool:
  """Whether a guide with this scale steers at all; ValueError unless finite and >= 0."""
  value = float(scale)
  if not np.isfinite(value) or value < 0:
    raise ValueError(f"guide_scale={scale!r} must be a finite number >= 0 (0: no guide)")
  return value != 0.0


def _progress(total, desc, enabled):
  if enabled:
    try:
      import tqdm  # pylint: disable=import-outside-toplevel

      return tqdm.tqdm(total=total, desc=desc, leave=True)
    except ImportError:
      pass
  return _NoBar()


class _NoBar:

  def update(self, _):
    pass

  def close(self):
    pass
