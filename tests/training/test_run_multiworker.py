"""trainer.strategy=multi_worker: one run trained by several processes (tf.distribute's
MultiWorkerMirroredStrategy), the cluster from TF_CONFIG or from Slurm's environment.

The end-to-end test starts two workers on localhost (TF_CONFIG, CPU), kills the non-chief worker
right after the checkpoint of step 2, checks that the chief stops within a bounded time with one
line and marks the MLflow run FAILED, then runs the same two commands again: they resume from the
chief's checkpoint and finish the same MLflow run, and the losses match those of one process
trained on the same global batches (killed and resumed at the same point).

The resolver's side of Slurm is tested here on the environment srun gives the tasks of a job,
recorded (a 2-node job: the cluster SlurmClusterResolver resolves, without running scontrol or
nvidia-smi) and real (two tasks on this machine form one cluster); the launcher's, on a real
Slurm, in test_slurm.py."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from helpers.runs import command, environment, experiment_runs, free_port, tiny_run_overrides

# ``python -m cbexp.run`` that dies (os._exit, as a SIGKILL would) right after the checkpoint of
# step CRASH_AFTER_CHECKPOINT was saved: deterministic, between two training steps.
CRASHING_RUN = textwrap.dedent("""
    import os, runpy, sys, time
    from cbexp.training import checkpoints
    step, save = int(os.environ["CRASH_AFTER_CHECKPOINT"]), checkpoints.save
    def save_then_crash(manager, at):
      result = save(manager, at)
      if at == step:
        with open(os.environ["CRASH_TIME_FILE"], "w") as f:
          f.write(str(time.time()))
        os._exit(137)
      return result
    checkpoints.save = save_then_crash
    sys.argv = ["cbexp.run", *sys.argv[1:]]
    runpy.run_module("cbexp.run", run_name="__main__")
""")
STEPS = 4
# The chief must stop within this many seconds of the other worker's death: TensorFlow's
# coordination service declares a task dead after a 10 s heartbeat timeout; the rest is the
# chief marking the MLflow run FAILED and exiting, slow on a loaded 2-core machine.
STOP_BOUND_S = 90
# Relative difference allowed between the per-step training losses of two workers and of one
# process on the same global batches. Measured: < 2e-4 (the training noise of tfc's entropy
# models is drawn per replica, so it differs between the two); consecutive batches of this data
# differ by 1-3 %, so a worker training on wrong or repeated crops would be far outside.
LOSS_TOLERANCE = 2e-3


def start(arguments, cwd, env, crash_after=None):
  if crash_after is not None:
    env = dict(
      env, CRASH_AFTER_CHECKPOINT=str(crash_after), CRASH_TIME_FILE=str(cwd / "crash_time")
    )
    argv = [sys.executable, "-c", CRASHING_RUN, *arguments]
  else:
    argv = command(arguments)
  return subprocess.Popen(
    argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )


def worker_environments(tmp_path):
  """TF_CONFIG of two workers on free localhost ports; scratch files under tmp_path."""
  ports = [free_port(), free_port()]
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  return [
    dict(
      environment(),
      TMPDIR=str(tmp_path),
      TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
    )
    for i in range(2)
  ]


def finish(process, timeout=600):
  stderr = process.communicate(timeout=timeout)[1]
  return process.returncode, stderr, time.time()


def losses(tracking_uri, key):
  client, runs = experiment_runs(tracking_uri)
  assert len(runs) == 1, [r.info.run_id for r in runs]
  history = client.get_metric_history(runs[0].info.run_id, key)
  return runs[0], {m.step: m.value for m in history}, sorted(m.step for m in history)


def test_two_workers_killed_and_resumed_make_one_run_that_matches_one_process(tmp_path):
  single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
  single_dir.mkdir()
  multi_dir.mkdir()
  settings = dict(steps=STEPS, log_every=1, val_every=2, checkpoint_every=2, threads=1)
  single_args = tiny_run_overrides(single_dir, **settings)
  multi_args = tiny_run_overrides(multi_dir, **settings) + [
    "trainer.strategy=multi_worker",
    "trainer.collective_timeout_s=600",
  ]
  envs = worker_environments(multi_dir)

  # Attempt 1: one process and two workers, each killed after the checkpoint of step 2 (the
  # workers: only worker 1, the non-chief). The single process runs alongside.
  single = start(single_args, single_dir, environment(), crash_after=2)
  chief = start(multi_args, multi_dir, envs[0])
  other = start(multi_args, multi_dir, envs[1], crash_after=2)
  code, other_err, _ = finish(other)
  assert code == 137, other_err[-3000:]
  code, chief_err, chief_end = finish(chief)
  stopped_after = chief_end - float((multi_dir / "crash_time").read_text())
  assert code == 2, chief_err[-3000:]
  assert "Traceback" not in chief_err
  last = chief_err.strip().splitlines()[-1]
  assert re.match(
    r"error: worker 0 stopped at step 3: a worker is gone or not answering "
    r"\((UnavailableError|AbortedError|DeadlineExceededError|CancelledError): ",
    last,
  ), last
  assert stopped_after < STOP_BOUND_S, (stopped_after, chief_err[-2000:])
  run, _, steps = losses(f"sqlite:///{multi_dir}/mlflow.db", "train/loss")
  assert run.info.status == "FAILED" and steps == [1, 2]
  (run_dir,) = multi_dir.glob("outputs/runs/*")
  assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.index")) == ["ckpt-2.index"]
  assert finish(single)[0] == 137

  # Attempt 2: the same commands resume from the chief's ckpt-2 and finish the same MLflow run.
  single = start(single_args, single_dir, environment())
  workers = [start(multi_args, multi_dir, env) for env in envs]
  results = [finish(process) for process in workers]
  for index, (code, stderr, _) in enumerate(results):
    assert code == 0, f"worker {index}: {stderr[-3000:]}"
    assert re.search(
      rf"resuming from {re.escape(str(run_dir))}/checkpoints/ckpt-2 at step 2", stderr
    ), stderr[-2000:]
  code, stderr, _ = finish(single)
  assert code == 0, stderr[-3000:]

  multi_run, multi_loss, steps = losses(f"sqlite:///{multi_dir}/mlflow.db", "train/loss")
  assert multi_run.info.run_id == run.info.run_id and multi_run.info.status == "FINISHED"
  assert steps == [1, 2, 3, 4]  # one series: each step once, from the chief only
  assert losses(f"sqlite:///{multi_dir}/mlflow.db", "val/loss")[2] == [2, 4]
  assert multi_run.data.tags["replicas"] == "2" and multi_run.data.tags["workers"] == "2"
  assert math.isfinite(multi_run.data.metrics["eval/psnr"])
  # The run directory is the chief's alone: its checkpoints, no other worker's files.
  assert (run_dir / "complete.json").is_file() and (run_dir / "model").is_dir()
  assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.index")) == [
    "ckpt-2.index",
    "ckpt-4.index",
  ]

  _, single_loss, _ = losses(f"sqlite:///{single_dir}/mlflow.db", "train/loss")
  for step in range(1, STEPS + 1):
    difference = abs(multi_loss[step] - single_loss[step]) / abs(single_loss[step])
    assert difference < LOSS_TOLERANCE, (step, multi_loss, single_loss)


# The environment of task 1 of `sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-task=1`, as
# srun sets it (the variables SlurmClusterResolver reads, and those around them).
SLURM_TASK_1_OF_2_NODES = {
  "SLURM_JOB_ID": "734512",
  "SLURM_JOB_NAME": "cbexp",
  "SLURM_PROCID": "1",
  "SLURM_LOCALID": "0",
  "SLURM_NODEID": "1",
  "SLURM_NTASKS": "2",
  "SLURM_NNODES": "2",
  "SLURM_JOB_NODELIST": "gpu-node[07-08]",
  "SLURM_TASKS_PER_NODE": "1(x2)",
  "SLURM_STEP_ID": "0",
  "SLURM_STEP_NUM_TASKS": "2",
  "SLURM_STEP_NUM_NODES": "2",
  "SLURM_STEP_NODELIST": "gpu-node[07-08]",
  "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
  "SLURMD_NODENAME": "gpu-node08",
}


def test_the_cluster_of_a_slurm_job_comes_from_its_environment(monkeypatch, tmp_path):
  """SlurmClusterResolver on a recorded environment (no Slurm here): both nodes, this task's
  index and role, ports from the job id, and no program run (no scontrol, no nvidia-smi)."""
  from cbexp.config import ConfigError
  from cbexp.training import distributed as training
  from cbexp.training import preflight

  monkeypatch.delenv("TF_CONFIG", raising=False)
  for key, value in SLURM_TASK_1_OF_2_NODES.items():
    monkeypatch.setenv(key, value)
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")

  def no_programs(*args, **kwargs):
    raise AssertionError(f"ran a program: {args}")

  monkeypatch.setattr(subprocess, "check_output", no_programs)
  monkeypatch.setattr(subprocess, "run", no_programs)
  monkeypatch.setattr(subprocess, "Popen", no_programs)

  port = training.SLURM_PORT_BASE + 734512 % 10000
  resolver = training.cluster_resolver()
  assert resolver.cluster_spec().as_dict() == {
    "worker": [f"gpu-node07:{port}", f"gpu-node08:{port}"]
  }
  assert (resolver.task_type, resolver.task_id) == ("worker", 1)
  assert training.worker_role(resolver) == (1, 2, False)
  assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible  # Slurm binds GPUs, not the resolver
  monkeypatch.setenv("SLURM_PROCID", "0")
  assert training.worker_role(training.cluster_resolver()) == (0, 2, True)

  # The same job step with the default strategy would train two copies into one run directory.
  cfg = compose(["transform=tiny", f"run_dir={tmp_path}/run"])
  with pytest.raises(
    ConfigError,
    match="this Slurm job step has 2 tasks: one run on "
    "several tasks needs trainer.strategy=multi_worker",
  ):
    preflight.validate(cfg)


# Two tasks of one Slurm job step on this machine: the strategy of each, from Slurm's variables.
SLURM_TASK = textwrap.dedent("""
    import os
    import tensorflow as tf
    from cbexp.training import distributed as training
    resolver = training.cluster_resolver()
    strategy = training.make_strategy("multi_worker", resolver)
    value = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([int(os.environ["SLURM_PROCID"])]))
    print(training.worker_role(resolver), strategy.num_replicas_in_sync,
          strategy.gather(value, axis=0).numpy().tolist(), strategy.extended.should_checkpoint)
""")


def free_port_pair():
  """A job id whose two Slurm worker ports (training.SLURM_PORT_BASE + id, + 1) are free."""
  import socket

  from cbexp.training import distributed as training

  for job_id in range(0, 10000, 7):
    port = training.SLURM_PORT_BASE + job_id
    try:
      with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", port + 1))
      return job_id
    except OSError:
      continue
  pytest.skip("no two free ports for the Slurm workers")


def test_two_tasks_of_a_slurm_step_form_one_cluster(tmp_path):
  """The strategy built from the environment srun gives two tasks on one node (localhost):
  both join one cluster of 2 replicas, an all-gather crosses them, task 0 is the chief."""
  env = dict(
    environment(),
    SLURM_JOB_ID=str(free_port_pair()),
    SLURM_STEP_NUM_TASKS="2",
    SLURM_STEP_NODELIST="localhost",
    SLURM_STEP_TASKS_PER_NODE="2",
  )
  env.pop("TF_CONFIG", None)
  tasks = [
    subprocess.Popen(
      [sys.executable, "-c", SLURM_TASK],
      cwd=tmp_path,
      text=True,
      env=dict(env, SLURM_PROCID=str(i)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for i in range(2)
  ]
  outputs = [task.communicate(timeout=300) for task in tasks]
  for task, (out, err) in zip(tasks, outputs):
    assert task.returncode == 0, err[-3000:]
  assert [out.strip() for out, _ in outputs] == [
    "(0, 2, True) 2 [0, 1] True",
    "(1, 2, False) 2 [0, 1] False",
  ]


def compose(overrides, hydra=False):
  from hydra import compose as hydra_compose
  from hydra import initialize_config_dir

  from cbexp.config import CONF_DIR

  with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)


def test_the_slurm_multi_launcher_starts_one_task_per_worker():
  launcher = compose(["hydra/launcher=slurm_multi"], hydra=True).hydra.launcher
  assert launcher._target_ == "hydra_plugins.cbexp_slurm.slurm_launcher.SlurmLauncher"
  assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_task) == (2, 1, 1)
  assert launcher.gpus_per_node is None  # one GPU per task, bound by Slurm


def test_the_workers_shares_of_the_crops_make_the_batches_of_one_process(tmp_path):
  """random_crops(part=(i, n)): worker i reads the i-th slice of every global batch, so the
  workers' crops are distinct and together exactly the crops one process trains on."""
  import numpy as np

  from cbexp import images
  from cbexp.training import data
  from helpers.runs import write_images

  paths = [str(p) for p in sorted(write_images(tmp_path, [(96, 96), (80, 128)]).iterdir())]
  whole = [b.numpy() for b in data.random_crops(paths, 64, 4, seed=3).take(3)]
  parts = [
    [b.numpy() for b in data.random_crops(paths, 64, 4, seed=3, part=(i, 2)).take(3)]
    for i in range(2)
  ]
  for step in range(3):
    assert parts[0][step].shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), whole[step])
  assert not np.array_equal(parts[0][0], parts[1][0])
  with pytest.raises(images.DataError, match="batch size 4 cannot be split into 3 equal parts"):
    data.random_crops(paths, 64, 4, part=(0, 3))
