import pytest

from imagen_jax import config_lib


def test_parse_arg_semantics():
  a = config_lib.parse_arg(
      "variant=tiny,runlocal,steps=3,lr=0.5", variant="paper", runlocal=False, steps=10, lr=1.0
  )
  assert (a.variant, a.runlocal, a.steps, a.lr) == ("tiny", True, 3, 0.5)
  assert config_lib.parse_arg("small", variant="paper").variant == "small"
  assert config_lib.parse_arg("runlocal", variant="paper", runlocal=False).runlocal is True
  assert config_lib.parse_arg(None, variant="paper").variant == "paper"
  assert config_lib.parse_arg("runlocal=false", runlocal=True).runlocal is False


def test_parse_arg_errors_name_the_key():
  with pytest.raises(ValueError, match="'varaint'.*known: variant"):
    config_lib.parse_arg("varaint=tiny", variant="paper")
  with pytest.raises(ValueError, match="steps='x'"):
    config_lib.parse_arg("steps=x", steps=1)
  with pytest.raises(ValueError, match="runlocal='maybe'"):
    config_lib.parse_arg("runlocal=maybe", runlocal=False)


def test_itstime():
  hits = [s for s in range(1, 101) if config_lib.itstime(s, 25, 100)]
  assert hits == [1, 25, 50, 75, 100]
  assert not any(config_lib.itstime(s, 0, 100) for s in range(1, 101))


def test_itstime_every_multiple_and_the_last_step():  # the trainer's logging cadence
  hits = [s for s in range(1, 103) if config_lib.itstime(s, 25, 102, first=False, drop_close=0)]
  assert hits == [25, 50, 75, 100, 102]


def test_itstime_drops_multiples_close_to_the_end():
  hits = [s for s in range(1, 103) if config_lib.itstime(s, 25, 102)]
  assert hits == [1, 25, 50, 75, 102]
