"""Crashes and damaged files in the middle of ``python -m cbexp.run``: a killed run resumes without
logging a step twice or losing one, a damaged checkpoint or record stops or falls back with one
line, a full disk leaves no partial checkpoint, and processes started together on a fresh
tracking store all finish."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from cbexp.training.rd_points import COMPUTE_FILE
from helpers.runs import (
  command,
  environment,
  experiment_runs,
  run_cbexp,
  tiny_run_overrides,
  write_images,
)

# Runs ``python -m cbexp.run`` with a deterministic crash: os._exit(137), as a SIGKILL would, at
# one point of the checkpoint save of training step CRASH_STEP.
#   files_written: after the checkpoint's files exist, before the manager's state file names
#                  them (tf.train.CheckpointManager._record_state);
#   before_save:   after the step's metrics were flushed to MLflow, before the checkpoint.
CRASHING_RUN = textwrap.dedent("""
    import os, runpy, sys
    import tensorflow as tf
    from cbexp.training import checkpoints
    point, step = os.environ["CRASH_POINT"], int(os.environ["CRASH_STEP"])
    if point == "files_written":
      record = tf.train.CheckpointManager._record_state
      def crash_before_state(manager):
        if manager.latest_checkpoint.endswith(f"ckpt-{step}"):
          os._exit(137)
        record(manager)
      tf.train.CheckpointManager._record_state = crash_before_state
    else:
      save = checkpoints.save
      def crash_before_save(manager, at):
        if at == step:
          os._exit(137)
        return save(manager, at)
      checkpoints.save = crash_before_save
    sys.argv = ["cbexp.run", *sys.argv[1:]]
    runpy.run_module("cbexp.run", run_name="__main__")
""")


def crashing_run(arguments, cwd, point, step):
  env = dict(environment(), CRASH_POINT=point, CRASH_STEP=str(step))
  return subprocess.run(
    [sys.executable, "-c", CRASHING_RUN, *arguments],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def steps_logged(client, run_id, key):
  return sorted(m.step for m in client.get_metric_history(run_id, key))


def resumed_at(stderr):
  match = re.search(r"resuming from \S+ at step (\d+)", stderr)
  return int(match.group(1)) if match else None


def test_kills_around_checkpoints_and_damaged_checkpoints_neither_repeat_nor_lose_a_step(tmp_path):
  """Three attempts of one run (16 steps, a checkpoint every 4, train metrics every 2):
  1. killed after ckpt-8's files were written, before the state file named them;
  2. (state file overwritten with garbage) resumes from ckpt-8, found from the files, and is
     killed after logging steps 9-12, before ckpt-12;
  3. (ckpt-8 truncated) falls back to ckpt-4 with a warning and finishes.
  Every step is logged exactly once, in one MLflow run that ends FINISHED."""
  arguments = tiny_run_overrides(tmp_path, steps=16)
  first = crashing_run(arguments, tmp_path, "files_written", 8)
  assert first.returncode == 137, first.stderr[-2000:]
  (run_dir,) = tmp_path.glob("outputs/runs/*")
  folder = run_dir / "checkpoints"
  assert (folder / "ckpt-8.index").is_file()
  assert "ckpt-8" not in (folder / "checkpoint").read_text()  # the window the kill hit

  (folder / "checkpoint").write_text("garbage {{{\n")
  second = crashing_run(arguments, tmp_path, "before_save", 12)
  assert second.returncode == 137, second.stderr[-2000:]
  assert resumed_at(second.stderr) == 8, second.stderr[-2000:]
  assert not (folder / "ckpt-12.index").exists()

  data = folder / "ckpt-8.data-00000-of-00001"
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  third = run_cbexp(arguments, cwd=tmp_path)
  assert third.returncode == 0, third.stderr[-3000:]
  assert "Traceback" not in third.stderr
  assert re.search(r"warning: checkpoint \S+ckpt-8 is unreadable", third.stderr)
  assert resumed_at(third.stderr) == 4

  client, (run,) = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  assert run.info.status == "FINISHED"
  run_id = run.info.run_id
  for key in ("train/loss", "train/bpp", "train/lr"):
    assert steps_logged(client, run_id, key) == list(range(2, 17, 2)), key
  assert steps_logged(client, run_id, "val/loss") == [4, 8, 12, 16]
  assert steps_logged(client, run_id, "eval/bpp") == [16]


def test_a_checkpoint_that_cannot_be_read_falls_back_and_none_readable_is_one_clear_error(tmp_path):
  import tensorflow as tf

  from cbexp.training import checkpoints

  variable = tf.Variable(tf.range(1000, dtype=tf.float32))
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), 5)
  for step in (1, 2):
    variable.assign_add(tf.ones(1000))
    checkpoints.save(manager, step)
  (tmp_path / "ckpt-1_temp").mkdir()  # what a crashed save leaves behind
  data = tmp_path / "ckpt-2.data-00000-of-00001"
  data.write_bytes(data.read_bytes()[:100])
  variable.assign(tf.zeros(1000))
  restored = checkpoints.restore_latest(tf.train.Checkpoint(v=variable), tmp_path)
  assert restored.endswith("ckpt-1") and float(variable[0]) == 1.0
  assert not (tmp_path / "ckpt-1_temp").exists()
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")  # state file matches
  data = tmp_path / "ckpt-1.data-00000-of-00001"
  data.write_bytes(b"")
  with pytest.raises(
    checkpoints.CheckpointError, match=r"no readable checkpoint in .* \(2 damaged\)"
  ):
    checkpoints.restore_latest(tf.train.Checkpoint(v=variable), tmp_path)


def test_a_full_disk_during_a_checkpoint_leaves_no_partial_checkpoint_and_fails_the_run(tmp_path):
  """A file-size limit (RLIMIT_FSIZE) below the checkpoint's size: writes fail as on a full disk.
  The run stops with one error line, leaves no ckpt-N_temp/ and no partial ckpt-4 files, and its
  MLflow run is FAILED."""
  import resource

  arguments = tiny_run_overrides(tmp_path, steps=8)
  limit = 1_500_000  # the tiny checkpoint is 2.4 MB; the fresh store under 1 MB

  def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  result = subprocess.run(
    command(arguments),
    cwd=tmp_path,
    env=environment(),
    capture_output=True,
    text=True,
    timeout=600,
    preexec_fn=limit_file_size,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: checkpoint at step 4 not written (") and "File too large" in last
  (run_dir,) = tmp_path.glob("outputs/runs/*")
  # compute.json (written first) may hold step 4's totals: it is read only for a restored step
  left = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name != COMPUTE_FILE]
  assert left == []
  _, (run,) = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  assert run.info.status == "FAILED"


def one_line_error(result):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert lines[-1].startswith("error: "), lines[-3:]
  return lines[-1]


def test_damaged_run_records_and_another_model_in_the_run_dir_are_one_line_errors(tmp_path):
  base = tiny_run_overrides(tmp_path, steps=4)
  run_dir = tmp_path / "run"
  arguments = base + [f"run_dir={run_dir}"]
  run_dir.mkdir()
  (run_dir / "mlflow_run.json").write_text('{"run_id": ')
  line = one_line_error(run_cbexp(arguments, cwd=tmp_path))
  assert f"{run_dir}/mlflow_run.json: unreadable (JSONDecodeError" in line and "delete it" in line

  (run_dir / "mlflow_run.json").unlink()
  assert run_cbexp(arguments, cwd=tmp_path).returncode == 0
  line = one_line_error(
    run_cbexp(base + [f"run_dir={run_dir}", "transform.num_filters=8"], cwd=tmp_path)
  )
  assert f"run_dir {run_dir} holds a run with transform.num_filters=16, not 8" in line

  (run_dir / "complete.json").write_text("[1, 2]")
  line = one_line_error(run_cbexp(arguments, cwd=tmp_path))
  assert f"{run_dir}/complete.json: not a JSON object; delete it" in line


def test_processes_started_together_on_a_fresh_store_all_finish(tmp_path):
  """Four independent runs (different lmbda) started at the same moment on a store that does not
  exist yet: all finish, and the store works afterwards."""
  base = tiny_run_overrides(tmp_path, steps=2, val_every=2, checkpoint_every=2)
  processes = [
    subprocess.Popen(
      command(base + [f"lmbda={lmbda}"]),
      cwd=tmp_path,
      env=environment(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for lmbda in (0.001, 0.002, 0.004, 0.008)
  ]
  errors = [p.communicate(timeout=900)[1] for p in processes]
  for process, stderr in zip(processes, errors):
    assert process.returncode == 0, stderr[-3000:]
  client, runs = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  assert sorted(r.data.tags["lmbda"] for r in runs) == ["0.001", "0.002", "0.004", "0.008"]
  assert {r.info.status for r in runs} == {"FINISHED"}
  client.set_tag(runs[0].info.run_id, "checked", "yes")  # the store still takes writes


def test_a_tracking_uri_that_is_not_an_mlflow_store_is_one_line(tmp_path):
  not_a_database = tmp_path / "notes.db"
  not_a_database.write_text("these are my notes\n" * 100)
  arguments = tiny_run_overrides(tmp_path) + [f"tracking.uri=sqlite:///{not_a_database}"]
  line = one_line_error(run_cbexp(arguments, cwd=tmp_path))
  assert line.startswith(
    f"error: tracking.uri sqlite:///{not_a_database}: not a usable MLflow store"
  ), line
  assert not_a_database.read_text() == "these are my notes\n" * 100
  assert not list(tmp_path.glob("outputs/runs/*/checkpoints"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files and folders")
def test_a_read_only_run_dir_is_one_line(tmp_path):
  folder = tmp_path / "read-only"
  folder.mkdir()
  folder.chmod(0o555)
  arguments = tiny_run_overrides(tmp_path) + [f"run_dir={folder}/run"]
  line = one_line_error(run_cbexp(arguments, cwd=tmp_path))
  assert f"{folder} is not a writable folder" in line


def test_a_truncated_eval_image_is_found_before_training(tmp_path):
  arguments = tiny_run_overrides(tmp_path)
  bad = write_images(tmp_path / "eval", [(192, 192)], seed=10) / "im00.png"
  bad.write_bytes(bad.read_bytes()[:-300])
  line = one_line_error(run_cbexp(arguments, cwd=tmp_path))
  assert f"{bad}: truncated PNG (the file ends before its IEND chunk)" in line
  assert (
    not list(tmp_path.glob("outputs/runs/*/checkpoints")) and not (tmp_path / "mlflow.db").exists()
  )
