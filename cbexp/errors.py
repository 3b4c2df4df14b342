"""The one base class of a user's mistake: every command prints such an error as one line and
exits with USER_ERROR (``cbexp.cli.common.run_command``); anything else is a bug and keeps its
traceback."""

USER_ERROR = 2  # the exit status of a refused input or config, in every command


class CbexpError(Exception):
  """A problem with the user's input, config, files or environment; the message is one line
  that names it."""


class LoadError(CbexpError, ValueError):
  """A model reference (export, model directory, runs:/, models:/) that cannot be used; the
  message names the reference as the user typed it. Defined here, below every layer that reads
  models, so that they all raise this one type (``cbexp.load`` is its public home)."""


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised like Ctrl-C (``cbexp.cli.train`` installs the handler): a run or sweep that
  is stopped ends as KILLED, not as a process that vanished with its MLflow run RUNNING."""
