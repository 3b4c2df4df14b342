"""Small files that must never be half-written or trusted blindly: outputs written atomically
(a temporary file beside the target, renamed or linked into place) and JSON records read with a
one-line error that names the file."""

import json
import os
import pathlib
import secrets

from cbexp.errors import CbexpError


def write_atomic(path, data, replace=True):
  """Writes ``data`` (bytes or str) to a temporary file beside ``path`` and moves it into place,
  so that a crash or a full disk never leaves a partial or stale file. ``replace=False``: an
  existing ``path`` is kept and FileExistsError raised, decided by the file system at the moment
  the file appears (a hard link never replaces), so that of two writers racing to a new name one
  wins and the other is told, where a check beforehand would let both write."""
  path = pathlib.Path(path)
  if isinstance(data, str):
    data = data.encode()
  temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
  # os.open with 0o666 honours the umask (tempfile.mkstemp would make the output owner-only).
  handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
    if replace:
      os.replace(temporary, path)
    else:
      _claim(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)


def _claim(temporary, path):
  """Puts ``temporary`` at the new name ``path``, FileExistsError if that name exists."""
  try:
    os.link(temporary, path)
  except FileExistsError:
    raise
  except OSError:  # a file system without hard links (FAT, some network mounts)
    # The name is claimed by creating it (O_EXCL decides between racing writers), then the
    # written file replaces the writer's own empty placeholder.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.replace(temporary, path)


class RecordError(CbexpError, ValueError):
  """A JSON record that cannot be read or lacks a field; the message names the file."""


def read_record(path, required=(), remedy=""):
  """-> the dict stored as JSON in ``path``; RecordError (one line naming the file) if it is
  unreadable, not a JSON object or lacks one of the ``required`` keys."""
  path = pathlib.Path(path)
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    problem = f"unreadable ({error.__class__.__name__}: {str(error).splitlines()[0]})"
  else:
    missing = [k for k in required if not isinstance(record, dict) or k not in record]
    if not missing:
      return record
    problem = "not a JSON object" if not isinstance(record, dict) else f"no '{missing[0]}'"
  raise RecordError(f"{path}: {problem}" + (f"; {remedy}" if remedy else ""))
