"""Shared command-line plumbing: bad input ends in one clear line on stderr and a non-zero exit,
not a traceback (set CBEXP_DEBUG=1 to see the traceback)."""
import os
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException


class UsageError(ValueError):
  """A user mistake with a message that says what to change."""


def describe(error):
  """One line for a user error raised by Hydra/OmegaConf/cbexp."""
  text = str(error).strip().splitlines()
  first = text[0] if text else error.__class__.__name__
  if "Could not find 'entropy/" in first or "Could not load 'entropy/" in first:
    from cbexp.config import CONF_DIR
    names = sorted(p.stem for p in (CONF_DIR / "entropy").glob("*.yaml"))
    return f"{first.rstrip('.')}: known entropy models are {', '.join(names)}"
  return first


def run_cli(body, argv):
  try:
    body(list(argv))
  except (UsageError, HydraException, OmegaConfBaseException, ValueError, OSError) as error:
    if os.environ.get("CBEXP_DEBUG"):
      raise
    print(f"error: {describe(error)}", file=sys.stderr)
    return 2
  return 0
