"""cbexp.training.checkpoints on a small tf.train.Checkpoint (no model, no training)."""

import logging

import tensorflow as tf

from cbexp.training import checkpoints


def test_max_checkpoints_holds_after_a_resume(tmp_path):
  """A resumed run keeps trainer.max_checkpoints: the state file restore_latest rewrites lets
  the new manager delete the old checkpoints too (TensorFlow's manager deletes only those it
  has timestamps for)."""
  step = tf.Variable(0)
  checkpoint = tf.train.Checkpoint(step=step)
  first = tf.train.CheckpointManager(
    checkpoint, str(tmp_path), max_to_keep=4, checkpoint_name="ckpt"
  )
  for n in range(1, 5):
    step.assign(n)
    checkpoints.save(first, n)
  assert len(checkpoints.checkpoints_on_disk(tmp_path)) == 4

  resumed = tf.train.Checkpoint(step=tf.Variable(0))
  assert checkpoints.restore_latest(resumed, tmp_path).endswith("ckpt-4")
  assert int(resumed.step) == 4
  manager = tf.train.CheckpointManager(
    resumed, str(tmp_path), max_to_keep=2, checkpoint_name="ckpt"
  )
  assert manager.latest_checkpoint.endswith("ckpt-4")
  checkpoints.save(manager, 5)
  assert [n for n, _ in checkpoints.checkpoints_on_disk(tmp_path)] == [5, 4]


class Client:
  def __init__(self):
    self.status = {}

  def set_terminated(self, run_id, status):
    self.status[run_id] = status


def test_a_stopped_run_says_whether_there_is_a_checkpoint_to_resume_from(tmp_path, caplog):
  """'resumes it from its last checkpoint' only when there is one."""
  import pytest

  from cbexp.training import job

  caplog.set_level(logging.INFO, logger="cbexp.run")
  client = Client()
  for checkpointed in (False, True):
    if checkpointed:
      step = tf.Variable(3)
      manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(step=step), str(tmp_path / "checkpoints"), 2, checkpoint_name="ckpt"
      )
      checkpoints.save(manager, 3)
    caplog.clear()
    with pytest.raises(KeyboardInterrupt), job.marked_on_failure(client, "r1", tmp_path):
      raise KeyboardInterrupt
    assert client.status == {"r1": "KILLED"}
    (line,) = [r.getMessage() for r in caplog.records]
    expected = (
      f"resumes it from its last checkpoint ({tmp_path}/checkpoints/ckpt-3)"
      if checkpointed
      else "starts it again from step 0 (no checkpoint was written)"
    )
    assert line == f"MLflow run r1 marked KILLED; the same command {expected}"
