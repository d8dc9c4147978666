"""StagePipeline: one cascade stage's network plus its diffusion objective.

The network (imagen_jax.models) only maps (x_t, log_snr, text, [lowres]) to a
prediction. This module owns everything around it that depends on the stage's
diffusion settings (the role of t5x's BaseModel, without the optimizer):

* ``loss_fn(params, batch, rng)``: caption dropout (nulls dropped rows),
  noise-conditioning augmentation of the low-res input (SR stages), the
  diffusion loss with the stage's objective and weighting;
* ``denoise_fn(...)``: wraps the network and classifier-free guidance into the
  pure ``denoise_fn(x_t, t)`` that ``diffusion.sample`` takes; the conditional
  and unconditional halves run as one batched forward pass;
* ``sample(...)``: the stage's images for given text (and low-res input).

Two base-stage variants (models/image_conditioning.py): a GLIDE-style *inpainting* stage
(`model.image_cond_channels = 4`) trains on random box masks (`diffusion.random_box_masks`,
`mask_box` / `mask_p_nothing_known`) with the masked image and the mask as extra input
channels, and samples with `known` / `mask` as that input (no mask: nothing known, plain
text-to-image); an unCLIP *decoder* stage (`model.image_embed_dim > 0`) takes a CLIP image
embedding (`batch["image_embed"]`, replaced by zeros with `image_embed_drop_prob` in
training, and in the unconditional half of classifier-free guidance).

The null (unconditional) text input is an all-zero embedding with an all-False
mask; networks attend to learned null tokens for it.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax.diffusion import inpaint as inpaint_lib
from imagen_jax.models import image_conditioning


@dataclasses.dataclass(frozen=True)
class StagePipeline:
  """A cascade stage: network + schedule + objective + augmentation."""

  model: Any
  schedule: diffusion.Schedule
  prediction: str = "eps"
  loss_weighting: str = "none"
  min_snr_gamma: float = 5.0
  aug_schedule: diffusion.Schedule | None = None
  aug_range: tuple[float, float] = (0.0, 1.0)
  # SR stages: the low-res input blurred by sigma ~ U[lo, hi] low-res pixels in training
  # (diffusion.blur_lowres, before the noise augmentation) and by (lo + hi) / 2 in sampling.
  lowres_blur: tuple[float, float] = (0.0, 0.0)
  mask_box: tuple[float, float] = (0.25, 0.75)
  mask_p_nothing_known: float = 0.1
  image_embed_drop_prob: float = 0.1

  def __post_init__(self):
    diffusion.process.check_prediction(self.prediction)
    diffusion.loss_weight(jnp.zeros(1), self.prediction, self.loss_weighting)
    lo, hi = self.aug_range
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f"aug_range={self.aug_range} must satisfy 0 <= min <= max <= 1")
    lo, hi = self.lowres_blur
    if not 0.0 <= lo <= hi:
      raise ValueError(f"lowres_blur={self.lowres_blur} must satisfy 0 <= min <= max")

  # ---------------------------------------------------------------- building
  @classmethod
  def from_config(cls, config):
    """Builds the stage from `config.model` and `config.diffusion`."""
    m, d = config.model, config.diffusion
    overrides = dict(m.get("overrides", {}) or {})
    model = models.get_model(m.name, m.variant, **overrides)
    sched_kw = dict(log_snr_min=d.get("log_snr_min", -20.0), log_snr_max=d.get("log_snr_max", 20.0))
    schedule = diffusion.get_schedule(
        d.schedule, shift=float(d.get("log_snr_shift", 0.0)), **sched_kw
    )
    aug_schedule = diffusion.get_schedule(d.get("aug_schedule", d.schedule), **sched_kw)
    inpaint = config.get("inpaint") or {}
    return cls(
        model=model,
        schedule=schedule,
        prediction=d.prediction,
        loss_weighting=d.get("loss_weighting", "none"),
        min_snr_gamma=d.get("min_snr_gamma", 5.0),
        aug_schedule=aug_schedule,
        aug_range=tuple(d.get("aug_range", (0.0, 1.0))),
        lowres_blur=tuple(float(v) for v in d.get("lowres_blur", (0.0, 0.0))),
        mask_box=tuple(inpaint.get("mask_box", (0.25, 0.75))),
        mask_p_nothing_known=float(inpaint.get("p_nothing_known", 0.1)),
        image_embed_drop_prob=float((config.get("decoder") or {}).get("embed_drop_prob", 0.1)),
    )

  @property
  def resolution(self) -> int:
    return self.model.resolution

  @property
  def lowres_resolution(self) -> int | None:
    return self.model.lowres_resolution

  @property
  def is_super_resolution(self) -> bool:
    return self.model.lowres_resolution is not None

  @property
  def is_inpainting(self) -> bool:
    """A GLIDE-style inpainting stage (the masked image and the mask as extra inputs)."""
    return int(getattr(self.model, "image_cond_channels", 0)) > 0

  @property
  def image_embed_dim(self) -> int:
    """The CLIP image embedding width of an unCLIP decoder stage (0: none)."""
    return int(getattr(self.model, "image_embed_dim", 0))

  def _image_kwargs(self, image_cond, image_embed) -> dict:
    kw = {}
    if image_cond is not None:
      kw["image_cond"] = image_cond
    if image_embed is not None:
      kw["image_embed"] = image_embed
    return kw

  def inpaint_input(self, batch: int, known, mask):
    """An inpainting stage's network input for `batch` samples: `inpaint_condition` of
    (known, mask) broadcast to the stage's size, or nothing known when neither is given."""
    r = self.resolution
    if known is None and mask is None:
      return jnp.zeros((batch, r, r, image_conditioning.INPAINT_CHANNELS), jnp.float32)
    known, mask = inpaint_lib.check_known_mask(known, mask, (batch, r, r, 3))
    return image_conditioning.inpaint_condition(known, mask)

  def dummy_inputs(self, batch_size, text_len):
    """Zero inputs of the right shapes, for init / eval_shape / lowering."""
    r = self.resolution
    out = dict(
        image=jnp.zeros((batch_size, r, r, 3), jnp.float32),
        text_emb=jnp.zeros((batch_size, text_len, self.model.text_dim), jnp.float32),
        text_mask=jnp.ones((batch_size, text_len), bool),
    )
    if self.is_super_resolution:
      lr = self.lowres_resolution
      out["lowres"] = jnp.zeros((batch_size, lr, lr, 3), jnp.float32)
    return out

  def init(self, rng, batch_size: int = 1, text_len: int = 8):
    """The network's variables (params boxed with logical axis names)."""
    b = self.dummy_inputs(batch_size, text_len)
    zeros = jnp.zeros((batch_size,), jnp.float32)
    lowres_kw = {}
    if self.is_super_resolution:
      lowres_kw = dict(lowres=b["lowres"], lowres_log_snr=zeros)
    r = self.resolution
    if self.is_inpainting:
      lowres_kw["image_cond"] = jnp.zeros((batch_size, r, r, self.model.image_cond_channels))
    if self.image_embed_dim:
      lowres_kw["image_embed"] = jnp.zeros((batch_size, self.image_embed_dim))
    return self.model.init(
        rng, b["image"], zeros, b["text_emb"], b["text_mask"], train=False, **lowres_kw
    )

  # ---------------------------------------------------------------- network
  def apply(
      self,
      params,
      x_t,
      t,
      text_emb,
      text_mask,
      *,
      lowres=None,
      aug_t=None,
      image_cond=None,
      image_embed=None,
      train=False,
  ):
    """The network's prediction at times t [B] (and augmentation times)."""
    kw = self._image_kwargs(image_cond, image_embed)
    if self.is_super_resolution:
      if lowres is None or aug_t is None:
        raise ValueError("a super-resolution stage needs lowres and aug_t")
      kw.update(lowres=lowres, lowres_log_snr=self.aug_schedule.log_snr(aug_t))
    return self.model.apply(
        {"params": params}, x_t, self.schedule.log_snr(t), text_emb, text_mask, train=train, **kw
    )

  # ---------------------------------------------------------------- training
  def loss_fn(self, params, batch, rng):
    """Mean diffusion loss of a device batch, and scalar metrics.

    `batch`: `image` float [-1, 1] [B, H, W, 3]; `text_emb` [B, L, D];
    `text_mask` [B, L] bool; optional `drop_text` [B] bool (those rows get the
    null text); `lowres` [B, h, w, 3] for SR stages; `image_embed` [B, D] for a decoder.
    An inpainting stage draws its masks here, from `rng`.
    """
    text_emb, text_mask = batch["text_emb"], batch["text_mask"]
    if "drop_text" in batch:
      text_emb, text_mask = null_text(text_emb, text_mask, batch["drop_text"])
    aug_rng, loss_rng = jax.random.split(rng)
    lowres = aug_t = None
    if self.is_super_resolution:
      lowres = batch["lowres"]
      if self.lowres_blur[1] > 0:
        sigma = jax.random.uniform(
            jax.random.fold_in(aug_rng, 1), (lowres.shape[0],), jnp.float32, *self.lowres_blur
        )
        lowres = diffusion.blur_lowres(lowres, sigma)
      lowres, aug_t = diffusion.augment_lowres(
          lowres, aug_rng, schedule=self.aug_schedule, aug_range=self.aug_range
      )
    image_cond = image_embed = None
    b, r = batch["image"].shape[0], batch["image"].shape[1]
    if self.is_inpainting:  # fold_in: the other stages' random streams stay as they were
      known = diffusion.random_box_masks(
          jax.random.fold_in(rng, 1),
          b,
          r,
          min_frac=self.mask_box[0],
          max_frac=self.mask_box[1],
          p_nothing_known=self.mask_p_nothing_known,
      )
      image_cond = image_conditioning.inpaint_condition(batch["image"], known)
    if self.image_embed_dim:
      if "image_embed" not in batch:
        raise ValueError("a decoder stage's batch needs image_embed (the CLIP image embedding)")
      drop = jax.random.uniform(jax.random.fold_in(rng, 2), (b,)) < self.image_embed_drop_prob
      image_embed = jnp.where(drop[:, None], 0.0, batch["image_embed"].astype(jnp.float32))

    def denoise(x_t, t):
      return self.apply(
          params,
          x_t,
          t,
          text_emb,
          text_mask,
          lowres=lowres,
          aug_t=aug_t,
          image_cond=image_cond,
          image_embed=image_embed,
          train=True,
      )

    per_example, aux = diffusion.diffusion_loss(
        denoise,
        batch["image"],
        loss_rng,
        schedule=self.schedule,
        prediction=self.prediction,
        weighting=self.loss_weighting,
        min_snr_gamma=self.min_snr_gamma,
    )
    loss = jnp.mean(per_example)
    return loss, {"loss": loss, "mse": jnp.mean(aux["mse"])}

  # ---------------------------------------------------------------- sampling
  def denoise_fn(
      self,
      params,
      text_emb,
      text_mask,
      guidance_scale: float = 1.0,
      *,
      lowres=None,
      aug_t=None,
      image_cond=None,
      image_embed=None,
  ):
    """The guided ``denoise_fn(x_t, t)`` for ``diffusion.sample``.

    With a Python guidance_scale == 1 only the conditional pass runs;
    otherwise (including a traced scale, so one compilation serves every
    scale) the conditional and unconditional inputs are concatenated along the
    batch and run as one forward pass, then combined with ``diffusion.cfg``. The
    unconditional half has the null text and (a decoder) the zero image embedding; an
    inpainting stage's image input is the same in both halves.
    """
    if not is_guided(guidance_scale):
      return lambda x_t, t: self.apply(
          params,
          x_t,
          t,
          text_emb,
          text_mask,
          lowres=lowres,
          aug_t=aug_t,
          image_cond=image_cond,
          image_embed=image_embed,
      )
    null_emb, null_mask = null_text(text_emb, text_mask, True)
    emb2 = jnp.concatenate([text_emb, null_emb])
    mask2 = jnp.concatenate([text_mask, null_mask])
    double = lambda a: None if a is None else jnp.concatenate([a, a])
    embed2 = None
    if image_embed is not None:
      embed2 = jnp.concatenate([image_embed, jnp.zeros_like(image_embed)])

    def guided(x_t, t):
      pred = self.apply(
          params,
          double(x_t),
          double(t),
          emb2,
          mask2,
          lowres=double(lowres),
          aug_t=double(aug_t),
          image_cond=double(image_cond),
          image_embed=embed2,
      )
      cond, uncond = jnp.split(pred, 2)
      return diffusion.cfg(cond, uncond, guidance_scale)

    return guided

  def sample(
      self,
      params,
      text_emb,
      text_mask,
      rng,
      *,
      sampler="ddpm",
      num_steps=64,
      guidance_scale=1.0,
      threshold="dynamic",
      percentile=diffusion.DEFAULT_PERCENTILE,
      max_value=None,
      lowres=None,
      aug_level=0.0,
      time_grid=None,
      steer=None,
      known=None,
      mask=None,
      resample=1,
      init=None,
      start_t=None,
      image_embed=None,
      paste_known=True,
  ):
    """Samples images in [-1, 1] for the given text (and low-res input); `time_grid`: see
    `diffusion.sample` (None: the sampler's default). `steer(denoise_fn, schedule,
    prediction) -> denoise_fn` adds a gradient guide (e.g. `diffusion.classifier_guidance`)
    on top of classifier-free guidance.

    Image conditioning, passed to `diffusion.sample` as is (see it for the details):
    RePaint inpainting with `known` (an image in [-1, 1] broadcastable to [B, r, r, 3]),
    `mask` (True where a pixel of `known` is kept) and `resample` R; SDEdit with `init`
    ([B, r, r, 3] in [-1, 1]) and `start_t` in (0, 1] (a Python number). Unset, sampling
    is unchanged. An inpainting stage also reads `known` / `mask` as its network input
    (none given: nothing known) and, with `paste_known=False`, leaves the known pixels to
    the network too (GLIDE without RePaint's replacement); a decoder stage needs
    `image_embed` [B, D]."""
    batch = text_emb.shape[0]
    aug_rng, sample_rng = jax.random.split(rng)
    aug_t = None
    if self.is_super_resolution:
      if lowres is None:
        raise ValueError("a super-resolution stage needs a low-res input")
      if self.lowres_blur[1] > 0:
        lowres = diffusion.blur_lowres(lowres, 0.5 * sum(self.lowres_blur))
      lowres, aug_t = diffusion.augment_lowres(
          lowres, aug_rng, schedule=self.aug_schedule, aug_level=aug_level
      )
    r = self.resolution
    image_cond = None
    if self.is_inpainting:
      image_cond = self.inpaint_input(batch, known, mask)
      if not paste_known:
        known = mask = None
    elif not paste_known:
      raise ValueError("paste_known=False is for inpainting stages (image_cond_channels=4)")
    if self.image_embed_dim and image_embed is None:
      raise ValueError(
          f"a decoder stage needs image_embed [B, {self.image_embed_dim}] (a CLIP image "
          "embedding: from the prior, or of an image for variations)"
      )
    if image_embed is not None:
      image_embed = jnp.asarray(image_embed, jnp.float32)
      if image_embed.shape != (batch, self.image_embed_dim):
        raise ValueError(
            f"image_embed shape {tuple(image_embed.shape)}: the decoder takes "
            f"[{batch}, {self.image_embed_dim}] (image_embed_dim={self.image_embed_dim})"
        )
    fn = self.denoise_fn(
        params,
        text_emb,
        text_mask,
        guidance_scale,
        lowres=lowres,
        aug_t=aug_t,
        image_cond=image_cond,
        image_embed=image_embed,
    )
    if steer is not None:
      fn = steer(fn, self.schedule, self.prediction)
    return diffusion.sample(
        fn,
        (batch, r, r, 3),
        sample_rng,
        schedule=self.schedule,
        sampler=sampler,
        num_steps=num_steps,
        prediction=self.prediction,
        threshold=threshold,
        percentile=percentile,
        max_value=max_value,
        time_grid=time_grid,
        known=known,
        mask=mask,
        resample=resample,
        init=init,
        start_t=start_t,
    )


def is_guided(guidance_scale) -> bool:
  """False only for a Python scale of exactly 1; raises for a negative one."""
  if isinstance(guidance_scale, (int, float)):
    if guidance_scale < 0:
      raise ValueError(f"guidance_scale={guidance_scale} must be >= 0")
    return guidance_scale != 1.0
  return True


def null_text(text_emb, text_mask, drop):
  """Replaces the rows where `drop` is True by the null text (zeros, no mask)."""
  drop = jnp.broadcast_to(jnp.asarray(drop, bool), text_mask.shape[:1])
  emb = jnp.where(drop[:, None, None], jnp.zeros_like(text_emb), text_emb)
  mask = jnp.where(drop[:, None], False, text_mask)
  return emb, mask
