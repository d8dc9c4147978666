"""Keeps the console readable: third-party INFO chatter (Orbax) goes quiet."""

import logging

_NOISY = ("orbax", "tensorstore", "jax/_src", "etils")


class _DropThirdPartyInfo(logging.Filter):

  def filter(self, record):
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(f"/{name}" in path for name in _NOISY)


def quiet_third_party():
  """Drops INFO records logged from Orbax/tensorstore code (warnings stay)."""
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_DropThirdPartyInfo())
  logging.getLogger("absl").addFilter(_DropThirdPartyInfo())
