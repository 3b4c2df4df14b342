"""Shared command-line plumbing: a user's mistake ends in one line on stderr and exit status 2,
not a traceback (CBEXP_DEBUG=1 shows it, and TensorFlow's logs).

``run_command`` wraps every command's body; ``run_key_values``: key=value commands on the model
config (``cbexp summary``), with ``--help``; ``one_line_parser``: argparse with one-line usage
errors; ``describe``: any user error as one line.
"""

import os
import sys

from hydra.errors import HydraException
from omegaconf import OmegaConf
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
  """One line for a user error raised by Hydra/OmegaConf/cbexp: the first line of its message,
  with Hydra's hint for an override of a key the config lacks, or the known entropy models."""
  lines = [line.strip() for line in str(error).strip().splitlines()]
  first = lines[0] if lines else error.__class__.__name__
  if getattr(error, "override", None) and error.override not in first:  # OverrideParseException
    first = f"{error.override}: {first}"
  hint = next((line for line in lines[1:] if line.startswith("To append")), None)
  if hint:
    return f"{first} {hint}"
  if "Could not find 'entropy/" in first or "Could not load 'entropy/" in first:
    from cbexp.config import entropy_names

    return f"{first.rstrip('.')}: known entropy models are {', '.join(entropy_names())}"
  return first


HELP_FLAGS = ("-h", "--help")


def config_groups_help():
  """The model-config groups and their options, for --help of key=value commands."""
  from cbexp.config import group_options

  lines = ["Config groups (group=option) and keys (key=value) of the model config:"]
  for group in ("transform", "entropy"):
    lines.append(f"  {group}: {', '.join(group_options(group))}")
  lines.append("  any key of conf/config.yaml, e.g. entropy.hidden_filters=[16,16] lmbda=0.013")
  return "\n".join(lines)


def quiet_unless_debug():
  """TensorFlow's start-up lines (CUDA, cuDNN, TensorRT, oneDNN) hidden unless CBEXP_DEBUG=1.
  Must run before TensorFlow is imported."""
  if not os.environ.get("CBEXP_DEBUG"):
    _quiet_libraries()


def run_key_values(prog, body, argv, doc):
  """For key=value commands on the model config (``cbexp summary``): ``--help`` prints ``doc``
  and the config groups; else ``run_command(prog, body, argv)``."""
  argv = list(argv)
  if any(a in HELP_FLAGS for a in argv):
    print(doc.strip() + "\n\n" + config_groups_help())
    return 0
  return run_command(prog, body, argv)


def _quiet_libraries():
  """Keeps stderr for our one-line errors: TensorFlow's C++ and Python logs, absl, warnings."""
  import logging
  import warnings

  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow loads (its imports are lazy)
  warnings.filterwarnings("ignore")
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  logging.getLogger("mlflow").setLevel(logging.ERROR)


# glibc's mallopt parameter (malloc.h), and the size from which a freed block goes back to the
# system at once (glibc's default threshold adapts up to 32 MB, keeping smaller freed blocks).
M_MMAP_THRESHOLD = -3
RETURNED_BLOCK_BYTES = 1 << 20


def return_freed_memory():
  """For a process that codes files within a memory budget (``cbexp codec compress`` and
  ``decompress`` unless --memory-budget 0, and the memory benchmark's processes likewise):
  what TensorFlow frees goes back to the system, so that the process holds what it uses. By
  default TensorFlow's oneDNN CPU allocator keeps every buffer it frees in a pool of its own,
  so a process stays at the most it ever held, and glibc keeps freed blocks of up to 32 MB in
  its heaps. The pool is faster (no fresh pages):
  the measured cost is in docs/guide/codec.md. Runs before TensorFlow allocates anything; a
  TF_ONEDNN_USE_SYSTEM_ALLOCATOR that the user set is kept."""
  global _RETURNING
  _RETURNING = True
  os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
  try:
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, RETURNED_BLOCK_BYTES)
  except (OSError, AttributeError):  # not glibc: its own policy
    pass


_RETURNING = False


def release_freed_memory():
  """In a process that gives freed memory back (``return_freed_memory``), once its model is
  loaded and its graph traced (``Codec.prepare``), before the coding: what the heap still holds
  free goes back to the system too (glibc's ``malloc_trim``). Loading and tracing free many
  blocks smaller than ``RETURNED_BLOCK_BYTES``, which the coding's large tensors would not
  reuse: ChARM's peak is about 0.1 GB lower (docs/guides/codec.md)."""
  if not _RETURNING:
    return
  try:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


def one_line_parser(prog, description, examples=None):
  """The argparse parser of a file tool: usage errors in one line with exit status 2, the
  description and the ``examples`` epilog printed as written."""
  import argparse

  class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the usage too; one line is the contract
      self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

  return OneLineParser(
    prog=prog,
    description=description,
    epilog=examples,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )


# Model-config arguments of the commands with a config of their own (bench, conformance): Hydra
# overrides of the models they build, as in ``cbexp train`` (a dotted key, or a config group).
MODEL_GROUPS = ("transform", "entropy", "scale_table", "lmbda")


def split_existing_paths(text):
  """A comma-separated list whose items may be folders with commas in their names (Hydra's sweep
  job folders: ``3_entropy=charm,lmbda=0.01``): pieces are joined back while the joined path
  does not exist but a longer one does."""
  pieces, items = text.split(","), []
  while pieces:
    item = pieces.pop(0)
    while (
      not os.path.isdir(item)
      and pieces
      and any(os.path.isdir(",".join([item] + pieces[:n])) for n in range(1, len(pieces) + 1))
    ):
      item += "," + pieces.pop(0)
    if item:
      items.append(item)
  return items


def _list_override(key, value):
  """``key=a,b`` of a list key as the Hydra list ``key=['a','b']`` (items quoted: paths may hold
  characters Hydra's grammar reserves)."""
  items = ", ".join("'" + item.replace("'", "\\'") + "'" for item in split_existing_paths(value))
  return f"{key}=[{items}]"


def _check_type(key, value, default):
  from omegaconf import ListConfig

  if (
    isinstance(default, int)
    and not isinstance(default, bool)
    and (isinstance(value, bool) or not isinstance(value, int))
  ):
    raise UsageError(f"{key} must be an integer, got {value!r}")
  if isinstance(default, ListConfig) and not isinstance(value, ListConfig):
    raise UsageError(f"{key} must be a list, got {value!r}")


def compose_command(config_name, argv):
  """``key=value`` arguments of a command with its own primary config ``conf/<config_name>.yaml``
  that also builds models -> (its composed config, the Hydra overrides of the models' config).
  A key of its config is the command's (a list key also takes ``a,b``; values keep the type of
  the key's default); a dotted key or a model group (MODEL_GROUPS) is a model override."""
  from cbexp.config import compose

  defaults = compose([], config_name)
  own, model = [], []
  for token in argv:
    key, sep, value = token.partition("=")
    if not sep:
      raise UsageError(f"argument {token!r} is not key=value")
    if key in defaults:
      listed = OmegaConf.is_list(defaults[key]) and not value.startswith("[")
      own.append(_list_override(key, value) if listed else token)
    elif "." in key or key.lstrip("+~") in MODEL_GROUPS:
      model.append(token)
    else:
      raise UsageError(
        f"unknown argument {key!r} (known: {', '.join(defaults)}, or model "
        "overrides such as transform=tiny)"
      )
  cfg = compose(own, config_name)
  for key in defaults:
    _check_type(key, cfg[key], defaults[key])
  return cfg, model


def run_composed(config_name, argv, library, **kwargs):
  """The body of a command with its own config (``compose_command``) whose work is
  ``library.run(cfg, overrides, **kwargs)`` (``library``: a module name, imported after the
  arguments and the model references are checked, so a mistake answers before TensorFlow
  loads)."""
  import importlib

  cfg, overrides = compose_command(config_name, argv)
  from cbexp.load import ModelRef

  for ref in cfg.model:
    ModelRef.parse(ref)
  importlib.import_module(library).run(cfg, overrides, **kwargs)


def command_help(doc, config_name):
  """--help of a ``compose_command`` command: ``doc``, its config file (every key with its
  comment) and the model-config groups."""
  from cbexp.config import CONF_DIR

  keys = (CONF_DIR / f"{config_name}.yaml").read_text().strip()
  return (
    f"{doc.strip()}\n\nKeys (key=value), conf/{config_name}.yaml:\n{keys}\n\n{config_groups_help()}"
  )
