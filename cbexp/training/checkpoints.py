"""Training checkpoints that survive crashes: which checkpoint a restarted run resumes from, and a
save that leaves nothing half-written.

The checkpoint files, not ``tf.train.CheckpointManager``'s state file (written after them), say
where to resume: the newest ``ckpt-N`` whose every tensor reads back, the state file rewritten to
match. A damaged newest checkpoint falls back to the one before, with one warning line.
"""

import logging
import pathlib
import re
import shutil

from cbexp import files
from cbexp.errors import CbexpError

log = logging.getLogger(__name__)
PREFIX = "ckpt"


class CheckpointError(CbexpError, RuntimeError):
  """A checkpoint that cannot be written or restored; the message says which and what to do."""


def _one_line(error):
  """TensorFlow's error text without its op-location prefix and temporary file names, e.g.
  "OutOfRangeError: File too large"."""
  text = getattr(error, "message", None) or str(error)
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text.strip())
  text = re.sub(r"\s*\[Op:\w+\]$", "", text.splitlines()[0] if text else "")
  if "; " in text and text.split("; ", 1)[0].startswith("/"):  # "<file>; <reason>"
    text = text.split("; ", 1)[1]
  return f"{error.__class__.__name__}: {text[:200]}" if text else error.__class__.__name__


def checkpoints_on_disk(folder):
  """[(step, prefix)] of the checkpoints whose index file exists, newest first."""
  found = []
  for index in pathlib.Path(folder).glob(f"{PREFIX}-*.index"):
    match = re.fullmatch(rf"{PREFIX}-(\d+)\.index", index.name)
    if match:
      found.append((int(match.group(1)), str(index)[: -len(".index")]))
  return sorted(found, reverse=True)


def verify(prefix):
  """Reads every tensor of a checkpoint (TensorFlow checks each one's CRC while reading): a
  truncated or damaged file raises here, not in the middle of training."""
  import tensorflow as tf

  reader = tf.train.load_checkpoint(prefix)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)


def restore_latest(checkpoint, folder, read_only=False):
  """Restores ``checkpoint`` (a tf.train.Checkpoint) from the newest readable checkpoint in
  ``folder`` and rewrites the manager's state file to match. -> its prefix, or None when the
  folder holds no checkpoint. Raises CheckpointError if checkpoints exist but none can be read,
  or if one reads but does not fit the model (another model size). ``read_only``: restores and
  changes nothing in ``folder`` (the other workers of a multi-worker run read the chief's
  checkpoints; only the chief tidies them)."""
  import tensorflow as tf

  folder = pathlib.Path(folder)
  if not read_only:
    remove_partial_writes(folder)
  found = checkpoints_on_disk(folder)
  for position, (step, prefix) in enumerate(found):
    try:
      verify(prefix)
    except Exception as error:  # OpError, or IndexError ("Read less bytes") on a short file
      log.warning(
        f"warning: checkpoint {prefix} is unreadable ({_one_line(error)}); trying the one before"
      )
      continue
    try:
      checkpoint.restore(prefix).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as error:
      raise CheckpointError(
        f"checkpoint {prefix} does not fit this model ({_one_line(error)}): "
        f"the run directory holds a run of another configuration; use "
        f"another run_dir or the original settings"
      ) from None
    if read_only:
      return prefix
    # Names relative to the folder (a moved run directory still resumes), oldest first.
    kept = [pathlib.Path(p) for _, p in reversed(found[position:])]
    # The manager's state file (a CheckpointState text proto), written as TensorFlow writes it.
    # With their timestamps: the manager deletes only checkpoints it has a timestamp for (after
    # last_preserved_timestamp), so without them max_to_keep would never apply to these again.
    stamps = [pathlib.Path(f"{p}.index").stat().st_mtime for p in kept]
    files.write_atomic(
      folder / "checkpoint",
      f'model_checkpoint_path: "{kept[-1].name}"\n'
      + "".join(f'all_model_checkpoint_paths: "{p.name}"\n' for p in kept)
      + "".join(f"all_model_checkpoint_timestamps: {t!r}\n" for t in stamps)
      + f"last_preserved_timestamp: {min(stamps) - 1!r}\n",
    )
    return prefix
  if found:
    raise CheckpointError(
      f"no readable checkpoint in {folder} ({len(found)} damaged): delete "
      f"the folder to train from the start"
    )
  return None


def remove_partial_writes(folder, step=None):
  """Removes what an interrupted save leaves: ``ckpt-N_temp/`` folders (all, or step N's) and,
  for ``step``, its own partial files."""
  folder = pathlib.Path(folder)
  pattern = f"{PREFIX}-{step if step is not None else '*'}_temp"
  for temporary in folder.glob(pattern):
    shutil.rmtree(temporary, ignore_errors=True)
  if step is not None:
    for partial in folder.glob(f"{PREFIX}-{step}.*"):
      partial.unlink(missing_ok=True)


def save(manager, step):
  """``manager.save`` numbered by the training step. A failed write (full disk, quota, I/O error)
  removes its partial files and raises CheckpointError; the previous checkpoints are kept."""
  import tensorflow as tf

  try:
    return manager.save(checkpoint_number=step)
  except (tf.errors.OpError, OSError) as error:
    remove_partial_writes(manager.directory, step)
    raise CheckpointError(
      f"checkpoint at step {step} not written ({_one_line(error)}); the last "
      f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept: free the "
      f"space and run the same command to resume"
    ) from None
