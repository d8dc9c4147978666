"""The failed save's debris is dropped; everything else still reaches stderr (a fresh process
each, since the hooks are process-wide). The end-to-end case is loop_test's full disk."""

import subprocess
import sys
import textwrap

_PROGRAM = textwrap.dedent("""
    import asyncio, sys
    from imagen_jax.train import save_echoes

    class Raises:  # a real unraisable exception, as tensorstore reports a callback's error
      def __init__(self, exc):
        self.exc = exc
      def __del__(self):
        raise self.exc

    def report(exc):
      Raises(exc)  # dropped at once: __del__ raises into sys.unraisablehook

    def closed_loop():
      loop = asyncio.new_event_loop()
      loop.close()
      try:
        loop.call_soon_threadsafe(print)
      except RuntimeError as e:
        exc = e
      report(exc)

    echoes = save_echoes.SaveEchoes()
    echoes.install()
    closed_loop(); closed_loop()          # before a failure: the first passes
    report(RuntimeError("Event loop is closed"))  # same text, not from asyncio: passes
    if sys.argv[1] == "failed":
      echoes.failed()
      closed_loop()                       # after: dropped
    report(ValueError("unrelated"))       # never dropped
    """)


def _stderr(mode):
  out = subprocess.run(
      [sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True
  )
  return out.stderr


def test_first_report_passes_later_ones_are_dropped():
  err = _stderr("open")
  assert err.count("in _check_closed") == 1, err
  assert err.count("RuntimeError: Event loop is closed") == 2, err
  assert "ValueError: unrelated" in err


def test_after_a_failure_the_debris_is_dropped_and_nothing_else():
  err = _stderr("failed")
  assert err.count("in _check_closed") == 1, err  # only the one from before the failure
  assert "may report the same failure again" in err
  assert err.strip().splitlines()[-1] == "ValueError: unrelated", err
