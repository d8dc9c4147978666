"""The command-line vocabulary of the cascade scripts (scripts/sample.py, scripts/eval_fid.py).

One name per meaning:
  --workdir_base, --workdir_sr1, --workdir_sr2   the stages' workdirs, named by their role in
      the cascade (base, first and second super-resolution stage), not by a resolution:
      the paper's cascade is 64 -> 256 -> 1024, the shapes demo's 16 -> 32 -> 64 (its
      configs/shapes.py stages are base, sr1, sr2 too);
  --output_dir   where a script writes its results (local or gs://), as prepare_data.py;
  --sampler, --num_steps, --guidance_scale, --threshold, --percentile, --aug_level,
  --time_grid
      per-stage sampler settings: one value (all stages) or one per stage, comma-separated.
The old names stay as aliases (`DEPRECATED`) so existing command lines keep working;
`warn_deprecated()` logs a warning for each one a command line used.

The functions define absl flags on `flags.FLAGS`; a script calls them at import, as it
would `flags.DEFINE_*` (nothing is defined when this module is imported).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from absl import app
from absl import flags
from absl import logging

from imagen_jax import diffusion
from imagen_jax.sampling import cascade

# Deprecated name -> the name that replaced it.
DEPRECATED = {
    "workdir_sr256": "workdir_sr1",
    "workdir_sr1024": "workdir_sr2",
    "outdir": "output_dir",
}
PER_STAGE_HELP = {
    "sampler": "|".join(diffusion.SAMPLERS),
    "num_steps": "Sampler steps.",
    "guidance_scale": "CFG scale (1 = none).",
    "threshold": "|".join(diffusion.THRESHOLDS),
    "percentile": "Dynamic threshold percentile.",
    "aug_level": "SR low-res noise augmentation level.",
    "time_grid": "|".join(diffusion.TIME_GRIDS) + " (default: the sampler's).",
}
_TYPES = {"sampler": str, "threshold": str, "num_steps": int, "time_grid": str}


def define_workdirs(flag_values: flags.FlagValues = flags.FLAGS) -> list[flags.FlagHolder]:
  """--workdir_base, --workdir_sr1, --workdir_sr2 (aliases --workdir_sr256,
  --workdir_sr1024), in cascade order."""
  fv = dict(flag_values=flag_values)
  holders = [
      flags.DEFINE_string("workdir_base", None, "Base stage workdir.", **fv),
      flags.DEFINE_string(
          "workdir_sr1",
          None,
          "First SR stage workdir (64->256; the "
          "shapes demo's 16->32). Deprecated alias: --workdir_sr256.",
          **fv,
      ),
      flags.DEFINE_string(
          "workdir_sr2",
          None,
          "Second SR stage workdir (256->1024). Deprecated alias: --workdir_sr1024.",
          **fv,
      ),
  ]
  for old in ("workdir_sr256", "workdir_sr1024"):
    flags.DEFINE_alias(old, DEPRECATED[old], **fv)
  return holders


def define_output_dir(
    default: str | None,
    help_text: str,
    *,
    required: bool = False,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> flags.FlagHolder:
  """--output_dir (alias --outdir)."""
  holder = flags.DEFINE_string(
      "output_dir",
      default,
      f"{help_text} Deprecated alias: --outdir.",
      required=required,
      flag_values=flag_values,
  )
  flags.DEFINE_alias("outdir", "output_dir", flag_values=flag_values)
  return holder


def define_per_stage(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
  return {
      name: flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
      for name, help_text in PER_STAGE_HELP.items()
  }


def workdirs(holders: Sequence[flags.FlagHolder]) -> list[str]:
  """The given stage workdirs, in cascade order; UsageError when there is none."""
  found = [h.value for h in holders if h.value]
  if not found:
    raise app.UsageError("give at least --workdir_base")
  return found


def per_stage(holders: Mapping[str, flags.FlagHolder], num_stages: int) -> dict[str, list]:
  """{setting: one value per stage (None: the stage config's)}; UsageError for a list of
  the wrong length."""
  out = {}
  for name, holder in holders.items():
    raw = holder.value
    if raw is None:
      out[name] = [None] * num_stages
      continue
    values = [_TYPES.get(name, float)(v) for v in raw.split(",")]
    if len(values) == 1:
      values *= num_stages
    if len(values) != num_stages:
      raise app.UsageError(f"--{name}={raw!r} has {len(values)} values for {num_stages} stages")
    out[name] = values
  return out


def stage_settings(
    stages: Sequence[cascade.Stage], per: Mapping[str, Sequence]
) -> list[cascade.StageSettings]:
  """Each stage's settings: its config's `sampling` group, with the flags' values over it."""
  return [
      cascade.StageSettings.from_config(s.config.sampling, **{k: per[k][i] for k in per})
      for i, s in enumerate(stages)
  ]


def warn_deprecated(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Logs a warning for each deprecated alias the command line used; returns their names."""
  used = [old for old in DEPRECATED if old in flag_values and flag_values[old].present]
  for old in used:
    logging.warning("--%s is deprecated; use --%s (same meaning).", old, DEPRECATED[old])
  return used
