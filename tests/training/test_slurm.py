"""The Slurm launchers on a real single-node Slurm (tests/helpers/slurm.py starts munged,
slurmctld and slurmd for this module and stops them; no accounting, no GPU): requests refused
before submitting, a job that can never start, a sweep stopped by Ctrl-C, one stopped by SIGTERM
and resumed by the same command, a multi-worker run with one task killed. Skipped with one line
where Slurm is missing."""

import os
import re
import signal
import subprocess
import time

import pytest

from helpers import slurm
from helpers.runs import command, environment, experiment_runs, tiny_run_overrides

FAST = [
  "hydra.launcher.poll_s=1",
  "hydra.launcher.cpus_per_task=1",
  "hydra.launcher.mem_gb=1",
  f"hydra.launcher.timeout_min={slurm.MAX_TIME_MIN}",
]
TIMEOUT = 600


def started(folder, accounting=False):
  reason = slurm.missing() or (accounting and slurm.accounting_missing())
  if reason:
    pytest.skip(f"no Slurm{' accounting' * accounting} here: {reason}")
  cluster = slurm.Cluster(folder, accounting=accounting)
  try:
    cluster.start()
  except (RuntimeError, subprocess.CalledProcessError) as error:
    cluster.stop()
    pytest.skip(f"Slurm does not start here: {str(error).splitlines()[0]}")
  return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """No accounting database: sacct fails, as on the cluster of the issue."""
  cluster = started(tmp_path_factory.mktemp("slurm"))
  yield cluster
  cluster.stop()


@pytest.fixture(scope="module")
def accounted_cluster(tmp_path_factory):
  """With slurmdbd and MariaDB: a working sacct."""
  cluster = started(tmp_path_factory.mktemp("slurm_accounting"), accounting=True)
  yield cluster
  cluster.stop()


def launch(cluster, arguments, cwd):
  env = dict(environment(), **{"SLURM_CONF": str(cluster.conf)})
  return subprocess.Popen(
    command(["-m", *arguments]),
    cwd=cwd,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    # Ctrl-C reaches the launcher as at a terminal, even when pytest itself runs in the
    # background (a shell's `&` ignores SIGINT, and Python keeps an ignored SIGINT ignored).
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )


def run(cluster, arguments, cwd):
  process = launch(cluster, arguments, cwd)
  stderr = process.communicate(timeout=TIMEOUT)[1]
  return process.returncode, stderr


def states(cluster):
  """{job id: state} of every job the cluster still lists (ended ones too)."""
  out = subprocess.run(
    ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T"],
    env=cluster.env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return dict(line.split("|") for line in out.split())


def wait_for(condition, what, launcher=None):
  """condition()'s first true value; fails at TIMEOUT or when ``launcher`` has ended."""
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    found = condition()
    if found:
      return found
    if launcher is not None and launcher.poll() is not None:
      raise AssertionError(f"the launcher ended before {what}: {launcher.communicate()[1]}")
    time.sleep(0.5)
  raise AssertionError(f"timed out waiting for {what}")


def sweep_runs(tmp_path):
  _, runs = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  parents = [r for r in runs if r.data.tags.get("run_type") == "sweep_parent"]
  return parents, [r for r in runs if r.data.tags.get("run_type") == "train"]


def assert_one_line_each(stderr):
  """No traceback, no Hydra report, no status-poll warnings (no sacct here)."""
  for noise in ("Traceback", "HYDRA_FULL_ERROR", "sacct", "Error executing job"):
    assert noise not in stderr, stderr[-3000:]


def test_requests_that_cannot_run_are_refused_in_one_line(cluster, tmp_path):
  arguments = tiny_run_overrides(tmp_path, steps=2)
  before = states(cluster)
  # The default launcher asks for a GPU; this cluster has none.
  code, stderr = run(cluster, [*arguments, "hydra/launcher=slurm"], tmp_path)
  assert code == 2 and stderr.strip().splitlines() == [
    f"error: hydra.launcher.gpus_per_node=1: partition {slurm.PARTITION} has no GPUs; on CPU "
    "nodes use hydra/launcher=slurm_cpu (or hydra.launcher.gpus_per_node=null "
    "hydra.launcher.gpus_per_task=null)"
  ], stderr
  # More CPUs than the node has.
  too_many = cluster.cpus + 1
  code, stderr = run(
    cluster,
    [*arguments, "hydra/launcher=slurm_cpu", f"hydra.launcher.cpus_per_task={too_many}"],
    tmp_path,
  )
  assert code == 2 and stderr.strip().splitlines() == [
    f"error: hydra.launcher.cpus_per_task={too_many} x tasks_per_node=1 = {too_many} CPUs per "
    f"node: the nodes of partition {slurm.PARTITION} have at most {cluster.cpus}; set "
    "hydra.launcher.cpus_per_task"
  ], stderr
  # Nothing submitted, no MLflow run created.
  assert states(cluster) == before and sweep_runs(tmp_path) == ([], [])

  # sbatch itself refuses (a node feature the cluster lacks): one line, the parent run FAILED.
  code, stderr = run(
    cluster,
    [*arguments, "hydra/launcher=slurm_cpu", *FAST, "hydra.launcher.constraint=a100"],
    tmp_path,
  )
  assert_one_line_each(stderr)
  last = stderr.strip().splitlines()[-1]
  assert code == 2 and re.fullmatch(
    r"error: sbatch refused the jobs: Invalid feature specification "
    r"\(sweep \S+: 0 jobs: 0 finished, 0 failed or stopped; MLflow parent run \w+ FAILED\)",
    last,
  ), stderr
  (parent,), children = sweep_runs(tmp_path)
  assert parent.info.status == "FAILED" and children == []

  # Longer than the partition allows: refused before submitting...
  longer = ["hydra/launcher=slurm_cpu", *FAST[:-1], f"hydra.launcher.timeout_min={10**4}"]
  code, stderr = run(cluster, [*arguments, *longer], tmp_path)
  assert code == 2 and stderr.strip().splitlines()[-1] == (
    f"error: hydra.launcher.timeout_min={10**4}: partition {slurm.PARTITION} allows at most "
    f"{slurm.MAX_TIME_MIN} minutes; set hydra.launcher.timeout_min"
  ), stderr
  # ... and, without that check (a limit sinfo would not show), accepted by sbatch but pending
  # for a reason that never clears: reported and cancelled at the first look, parent FAILED.
  code, stderr = run(cluster, [*arguments, *longer, "~hydra.callbacks.launcher_check"], tmp_path)
  assert_one_line_each(stderr)
  lines = stderr.strip().splitlines()
  assert code == 1, stderr
  assert re.fullmatch(
    r"error: job \d+ \(.*\): cannot start: Slurm keeps it pending with "
    r"Reason=Partition(Config|TimeLimit) \(no node of the partition can give what it asks for\); "
    r"cancelled",
    lines[-2],
  ), stderr
  job = re.match(r"error: job (\S+)", lines[-2]).group(1)
  assert states(cluster)[job] == "CANCELLED"
  assert re.fullmatch(
    r"sweep \S+ ended: 1 jobs: 0 finished, 1 failed or stopped; MLflow parent run \w+ FAILED; "
    r"the same command resumes it: python -m cbexp.run -m .*",
    lines[-1],
  ), stderr


def stop_a_sweep(cluster, tmp_path, sig):
  """Launches a 2-job sweep, sends ``sig`` to the launcher once both jobs run, checks the one
  line, the exit status, the cancelled jobs and the KILLED parent -> (arguments, parent run)."""
  arguments = [a for a in tiny_run_overrides(tmp_path, steps=2) if not a.startswith("entropy=")]
  arguments = ["entropy=hyperprior", "lmbda=0.005,0.02", *arguments, "hydra/launcher=slurm_cpu"]
  arguments += FAST
  before = set(states(cluster))
  launcher = launch(cluster, arguments, tmp_path)

  def running():
    ours = {k: v for k, v in states(cluster).items() if k not in before}
    return len(ours) == 2 and set(ours.values()) == {"RUNNING"} and ours

  jobs = wait_for(running, "both jobs to run", launcher)
  launcher.send_signal(sig)
  stderr = launcher.communicate(timeout=TIMEOUT)[1]
  assert launcher.returncode == 130, stderr
  assert_one_line_each(stderr)
  ids = ", ".join(sorted(jobs))
  cause = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
  assert re.fullmatch(
    rf"sweep (\S+) stopped by {cause} \(Slurm jobs {ids} cancelled\): 2 jobs: 0 finished, 2 "
    r"failed or stopped; MLflow parent run (\w+) KILLED; the same command resumes it: "
    r"python -m cbexp.run -m entropy=hyperprior lmbda=0.005,0.02 .*hydra.launcher.timeout_min=60",
    stderr.strip().splitlines()[-1],
  ), stderr
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  wait_for(lambda: all(states(cluster)[j] == "CANCELLED" for j in jobs), "the jobs to be cancelled")
  (parent,), _ = sweep_runs(tmp_path)
  assert parent.info.status == "KILLED"
  return arguments, parent


def test_a_sweep_stopped_by_ctrl_c_ends_in_one_line(cluster, tmp_path):
  stop_a_sweep(cluster, tmp_path, signal.SIGINT)


def test_a_sweep_stopped_by_sigterm_is_resumed_by_the_same_command(cluster, tmp_path):
  arguments, parent = stop_a_sweep(cluster, tmp_path, signal.SIGTERM)

  # The same command: the same sweep directory and parent run, both jobs to the end.
  code, stderr = run(cluster, arguments, tmp_path)
  assert code == 0, stderr[-3000:]
  assert f"(resumed; MLflow parent run {parent.info.run_id} in" in stderr
  (again,), children = sweep_runs(tmp_path)
  assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
  assert sorted(r.data.params["lmbda"] for r in children) == ["0.005", "0.02"]
  assert {r.info.status for r in children} == {"FINISHED"}
  assert len(list(tmp_path.glob("outputs/sweeps/*"))) == 1


def task_pid(cluster, job_id, task):
  """The PID of task ``task`` of Slurm job ``job_id`` of ``cluster`` (its submitit process)."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
      cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
      continue
    wanted = {
      f"SLURM_CONF={cluster.conf}".encode(),
      f"SLURM_JOB_ID={job_id}".encode(),
      f"SLURM_PROCID={task}".encode(),
    }
    if wanted <= set(environ) and b"submitit" in cmdline:
      return int(pid)
  return None


def test_a_multi_worker_job_with_a_killed_task_ends_failed_in_one_line(cluster, tmp_path):
  killed_task(cluster, tmp_path)


def test_the_same_with_a_working_sacct(accounted_cluster, tmp_path):
  job = killed_task(accounted_cluster, tmp_path)
  out = subprocess.run(
    ["sacct", "-X", "-n", "-P", "-j", job, "-o", "State"],
    env=accounted_cluster.env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert out.split() == ["FAILED"]


def killed_task(cluster, tmp_path):
  """A 2-task multi-worker job whose task 1 is killed after the checkpoint of step 2 ends with
  one line naming the dead task and the chief's error, the job and both MLflow runs FAILED.
  -> the job's id."""
  arguments = tiny_run_overrides(tmp_path, steps=40, checkpoint_every=2, threads=1)
  arguments += [
    "trainer.strategy=multi_worker",
    "hydra/launcher=slurm_multi",
    "hydra.launcher.nodes=1",
    "hydra.launcher.tasks_per_node=2",
    "hydra.launcher.gpus_per_task=null",
    *FAST,
  ]
  before = set(states(cluster))
  launcher = launch(cluster, arguments, tmp_path)
  wait_for(
    lambda: list(tmp_path.glob("outputs/sweeps/*/0_*/checkpoints/ckpt-2.index")), "ckpt-2", launcher
  )
  (job,) = [k for k in states(cluster) if k not in before]
  os.kill(wait_for(lambda: task_pid(cluster, job.split("_")[0], 1), "task 1"), signal.SIGKILL)
  stderr = launcher.communicate(timeout=TIMEOUT)[1]
  assert launcher.returncode == 1, stderr[-3000:]
  assert_one_line_each(stderr)
  lines = stderr.strip().splitlines()
  assert re.fullmatch(
    rf"error: job {job} \(.*\): task 1 ended without a result \(Slurm state FAILED; log \S+\); "
    r"task 0: worker 0 stopped at step \d+: a worker is gone or not answering .*",
    lines[-2],
  ), stderr
  assert re.fullmatch(
    r"sweep \S+ ended: 1 jobs: 0 finished, 1 failed or stopped; MLflow parent run \w+ FAILED; "
    r"the same command resumes it: .*",
    lines[-1],
  ), stderr
  (parent,), (child,) = sweep_runs(tmp_path)
  assert parent.info.status == "FAILED" and child.info.status == "FAILED"
  # The job failed with its run: Slurm says so, and its log does not say "successfully".
  assert states(cluster)[job] == "FAILED"
  (log,) = tmp_path.glob(f"outputs/sweeps/*/.submitit/{job}/{job}_0_log.err")
  assert "completed successfully" not in log.read_text()
  return job


def test_what_sinfo_says_is_read_as_slurm_means_it():
  """Without a cluster: sinfo's GRES and time-limit texts, and a GPU partition's request check."""
  from cbexp.training import slurm as launcher

  assert [launcher.gpu_count(g) for g in ("(null)", "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:1")] == [
    0,
    4,
    3,
  ]
  assert [launcher.minutes(t) for t in ("infinite", "30", "1:00:00", "2-00:00:00", "1-12")] == [
    float("inf"),
    30,
    60,
    2880,
    2160,
  ]
  nodes = [
    launcher.Node("g1", 32, 256 * 1024, 4, 2880),
    launcher.Node("g2", 16, 128 * 1024, 2, 2880),
  ]
  request = {"nodes": 1, "tasks_per_node": 4, "cpus_per_task": 8, "gpus_per_task": 1, "mem_gb": 200}
  assert launcher.request_problem(request, "gpu", nodes) is None
  assert launcher.request_problem(dict(request, nodes=2), "gpu", nodes) == (
    "hydra.launcher.nodes=2: partition gpu has 1 node(s) with 32 CPUs, 200 GB and 4 GPUs; set "
    "hydra.launcher.nodes"
  )
  assert launcher.request_problem(dict(request, gpus_per_task=2), "gpu", nodes).startswith(
    "hydra.launcher.gpus_per_task=2: partition gpu has at most 4 GPUs per node;"
  )
  assert launcher.request_problem(dict(request, mem_gb=300), "gpu", nodes) == (
    "hydra.launcher.mem_gb=300: the nodes of partition gpu have at most 256 GB; set "
    "hydra.launcher.mem_gb"
  )


def test_the_launcher_asks_again_when_squeue_does_not_answer(monkeypatch, tmp_path):
  """A failing squeue (slurmctld restarting) is asked again; the job's result is still read."""
  import pickle
  import types

  from cbexp.training import slurm as launcher

  result = tmp_path / "5_0_result.pkl"
  result.write_bytes(pickle.dumps(("success", "the job's value")))
  job = types.SimpleNamespace(job_id="5", num_tasks=1)
  job.paths = types.SimpleNamespace(result_pickle=result, stderr=tmp_path / "5_0_log.err")
  job.task = lambda task: job
  answers = [launcher.SlurmError("squeue: error: Socket timed out"), {"5": ("COMPLETED", "")}]

  def job_states(ids):
    answer = answers.pop(0)
    if isinstance(answer, Exception):
      raise answer
    return answer

  monkeypatch.setattr(launcher, "job_states", job_states)
  assert launcher.follow([job], ["lmbda=0.01"], poll_s=0) == ["the job's value"]
  assert answers == []
