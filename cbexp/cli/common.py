"""Shared command-line plumbing: bad input ends in one clear line on stderr and a non-zero exit,
not a traceback (set CBEXP_DEBUG=1 to see the traceback).

``run_cli``: key=value commands built on Hydra (cbexp.summary; cbexp.run and cbexp.analysis go
through Hydra's own entry point). ``run_argparse_cli`` + ``one_line_parser``: the argparse
commands (cbexp.codec, cbexp.export)."""
import os
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException


from cbexp.errors import USER_ERROR, CbexpError


class UsageError(CbexpError, ValueError):
  """A user mistake with a message that says what to change."""


# What a command reports as the user's mistake in one line: cbexp's own errors, and Hydra's and
# OmegaConf's (a bad override or config value).
USER_ERRORS = (CbexpError, HydraException, OmegaConfBaseException)


def run_command(prog, body, *args):
  """Runs ``body(*args)`` for the command ``prog`` (e.g. "cbexp codec"): a user error
  (USER_ERRORS) -> ``<prog>: error: <one line>`` on stderr and exit status USER_ERROR;
  Ctrl-C -> ``<prog>: interrupted``, 130. Anything else is a bug: its traceback stays.
  CBEXP_DEBUG=1 shows TensorFlow's logs and re-raises user errors too. Returns the exit status."""
  debug = bool(os.environ.get("CBEXP_DEBUG"))
  if not debug:
    _quiet_libraries()
  try:
    body(*args)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except USER_ERRORS as error:
    if debug:
      raise
    print(f"{prog}: error: {describe(error)}", file=sys.stderr)
    return USER_ERROR
  return 0


def describe(error):
  """One line for a user error raised by Hydra/OmegaConf/cbexp."""
  text = str(error).strip().splitlines()
  first = text[0] if text else error.__class__.__name__
  if "Could not find 'entropy/" in first or "Could not load 'entropy/" in first:
    from cbexp.config import entropy_names
    return f"{first.rstrip('.')}: known entropy models are {', '.join(entropy_names())}"
  return first


HELP_FLAGS = ("-h", "--help")


def config_groups_help():
  """The model-config groups and their options, for --help of key=value commands."""
  from cbexp.config import CONF_DIR
  lines = ["Config groups (group=option) and keys (key=value) of the model config:"]
  for group in ("transform", "entropy"):
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    lines.append(f"  {group}: {', '.join(options)}")
  lines.append("  any key of conf/config.yaml, e.g. entropy.hidden_filters=[16,16] lmbda=0.013")
  return "\n".join(lines)


def quiet_unless_debug():
  """TensorFlow's start-up lines (CUDA, cuDNN, TensorRT, oneDNN) hidden unless CBEXP_DEBUG=1.
  Must run before TensorFlow is imported."""
  if not os.environ.get("CBEXP_DEBUG"):
    _quiet_libraries()


def run_cli(body, argv, doc=None):
  """For key=value commands (cbexp.summary): ``--help`` prints ``doc`` and the config groups."""
  argv = list(argv)
  if any(a in HELP_FLAGS for a in argv):
    print((doc or "").strip() + "\n\n" + config_groups_help())
    return 0
  quiet_unless_debug()
  try:
    body(argv)
  except (UsageError, HydraException, OmegaConfBaseException, ValueError, OSError) as error:
    if os.environ.get("CBEXP_DEBUG"):
      raise
    print(f"error: {describe(error)}", file=sys.stderr)
    return 2
  return 0


def _one_line(error):
  lines = str(error).strip().splitlines()
  return lines[0].strip() if lines else error.__class__.__name__


def _quiet_libraries():
  """Keeps stderr for our one-line errors: TensorFlow's C++ and Python logs, absl, warnings."""
  import logging
  import warnings
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow loads (its imports are lazy)
  warnings.filterwarnings("ignore")
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  logging.getLogger("mlflow").setLevel(logging.ERROR)


def run_argparse_cli(parser, body, argv, intermixed=False):
  """For argparse commands (codec, export): parses ``argv`` and runs ``body(args)``; any error
  -> one line on stderr, exit 1 (argparse's own usage errors: exit 2).
  ``intermixed``: positional arguments may follow options (``--from X out=...``)."""
  debug = bool(os.environ.get("CBEXP_DEBUG"))
  if not debug:
    _quiet_libraries()
  args = (parser.parse_intermixed_args if intermixed else parser.parse_args)(argv)
  try:
    body(args)
  except KeyboardInterrupt:
    print(f"{parser.prog}: interrupted", file=sys.stderr)
    return 130
  except Exception as error:  # noqa: BLE001 - the CLI contract: one line, no traceback
    if debug:
      raise
    kind = "" if isinstance(error, (ValueError, OSError)) else f"{error.__class__.__name__}: "
    print(f"{parser.prog}: error: {kind}{_one_line(error)}", file=sys.stderr)
    return 1
  return 0


def one_line_parser(**kwargs):
  import argparse

  class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the usage too; one line is the contract
      self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

  return OneLineParser(**kwargs)


# Model-config arguments of the key=value commands (bench, conformance): Hydra overrides, as in
# ``cbexp.run`` (a dotted key, or a config group of the model).
MODEL_GROUPS = ("transform", "scale_table", "lmbda")


def parse_key_values(argv, defaults, error, integers=()):
  """``key=value`` arguments -> (the command's own arguments, merged into ``defaults``; Hydra
  overrides of the model config). Unknown keys and non-integers among ``integers`` raise
  ``error`` (the command's one-line error class)."""
  args, overrides = dict(defaults), []
  for token in argv:
    key, sep, value = token.partition("=")
    if not sep:
      raise error(f"argument {token!r} is not key=value")
    if key in defaults:
      args[key] = value
    elif "." in key or key.lstrip("+~") in MODEL_GROUPS:
      overrides.append(token)
    else:
      raise error(f"unknown argument {key!r} (known: {', '.join(defaults)}, or Hydra "
                  f"overrides such as transform=tiny)")
  for key in integers:
    try:
      args[key] = int(args[key])
    except ValueError:
      raise error(f"{key} must be an integer, got {args[key]!r}") from None
  return args, overrides
