"""imagen_jax.sampling.cli_flags: the cascade scripts' flag names, their deprecated aliases
and the per-stage values."""

from absl import app
from absl import flags
import pytest

from imagen_jax.sampling import cascade
from imagen_jax.sampling import cli_flags


def _flags(argv, required_output=False):
  fv = flags.FlagValues()
  workdirs = cli_flags.define_workdirs(flag_values=fv)
  out = cli_flags.define_output_dir(
      None if required_output else "samples", "Output.", required=required_output, flag_values=fv
  )
  per = cli_flags.define_per_stage(flag_values=fv)
  fv(["prog", *argv])
  return fv, workdirs, out, per


def test_new_names_and_no_warning():
  fv, workdirs, out, _ = _flags(
      ["--workdir_base=b", "--workdir_sr1=s1", "--workdir_sr2=s2", "--output_dir=o"]
  )
  assert cli_flags.workdirs(workdirs) == ["b", "s1", "s2"]
  assert out.value == "o"
  assert cli_flags.warn_deprecated(fv) == []


def test_deprecated_aliases_set_the_new_flags_and_warn(caplog):
  fv, workdirs, out, _ = _flags(
      ["--workdir_base=b", "--workdir_sr256=s1", "--workdir_sr1024=s2", "--outdir=o"],
      required_output=True,
  )
  assert cli_flags.workdirs(workdirs) == ["b", "s1", "s2"]
  assert out.value == "o" and fv["output_dir"].value == "o"
  with caplog.at_level("WARNING"):
    used = cli_flags.warn_deprecated(fv)
  assert used == ["workdir_sr256", "workdir_sr1024", "outdir"]
  assert "--workdir_sr256 is deprecated; use --workdir_sr1" in caplog.text


def test_required_output_dir_is_enforced():
  with pytest.raises(flags.IllegalFlagValueError, match="output_dir"):
    _flags(["--workdir_base=b"], required_output=True)


def test_per_stage_values():
  _, workdirs, _, per = _flags(
      [
          "--workdir_base=b",
          "--workdir_sr1=s",
          "--sampler=ddim",
          "--guidance_scale=5,1",
          "--num_steps=8",
      ]
  )
  values = cli_flags.per_stage(per, len(cli_flags.workdirs(workdirs)))
  assert values["sampler"] == ["ddim", "ddim"]
  assert values["guidance_scale"] == [5.0, 1.0]
  assert values["num_steps"] == [8, 8]
  assert values["threshold"] == [None, None]
  with pytest.raises(app.UsageError, match="has 2 values for 3 stages"):
    cli_flags.per_stage(per, 3)


def test_no_workdir_is_a_usage_error():
  _, workdirs, _, _ = _flags([])
  with pytest.raises(app.UsageError, match="give at least --workdir_base"):
    cli_flags.workdirs(workdirs)


def test_time_grid_per_stage_and_a_bad_one_named():
  _, workdirs, _, per = _flags(
      ["--workdir_base=b", "--workdir_sr1=s", "--sampler=edm_heun,ddim", "--time_grid=uniform_t"]
  )
  values = cli_flags.per_stage(per, len(cli_flags.workdirs(workdirs)))
  assert values["time_grid"] == ["uniform_t", "uniform_t"]
  assert values["sampler"] == ["edm_heun", "ddim"]
  settings = cascade.StageSettings(sampler="edm_heun", time_grid="karras").validate()
  assert settings.time_grid == "karras"
  with pytest.raises(ValueError, match=r"stage 0: unknown time_grid 'uniform'; allowed: log_snr"):
    cascade.StageSettings(time_grid="uniform").validate("stage 0")
