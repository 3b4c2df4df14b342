"""Slurm launchers (``hydra/launcher=slurm``, ``slurm_cpu``, ``slurm_multi``): those of
hydra-submitit-launcher, made to fit the cluster and to end cleanly.

- Before anything is submitted (or an MLflow run created), ``LauncherCheck`` compares the request
  with the nodes of the partition as ``sinfo`` reports them: a request no node can satisfy (GPUs
  on a partition without any, more CPUs or memory than its largest node, more time than the
  partition allows) is refused in one line.
- ``SlurmLauncher.launch`` submits with submitit, then follows the jobs with ``squeue`` (which
  also lists jobs that ended recently, without accounting) and the result files submitit's tasks
  write: a job ends when every task wrote its result, or when Slurm says it ended (a task that
  died writes none); a job pending for a reason that never clears (``PartitionConfig``, ...) is
  cancelled and reported. ``sacct`` is never needed.
- A job whose run failed raises on its node, so that the Slurm job fails with it (exit status
  non-zero) instead of ending "successfully".
- Ctrl-C or SIGTERM (``cbexp.errors.Terminated``) in the launching process cancels the jobs it
  submitted (``scancel``).
"""

import contextlib
import dataclasses
import io
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import time

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from cbexp.errors import USER_ERROR, CbexpError, Terminated
from cbexp.tracking import sweeps

# Pending reasons that no amount of waiting clears: the job asks for what its partition, QOS or
# account can never give (squeue's REASON, man squeue "JOB REASON CODES"). Not ReqNodeNotAvail,
# PartitionDown or PartitionInactive: nodes and partitions come back.
NEVER_STARTS = (
  "PartitionConfig",
  "PartitionNodeLimit",
  "PartitionTimeLimit",
  "BadConstraints",
  "InvalidAccount",
  "InvalidQOS",
  "QOSMaxCpuPerJobLimit",
  "QOSMaxGRESPerJob",
  "QOSMaxMemoryPerJob",
  "QOSMaxNodePerJobLimit",
  "QOSMaxWallDurationPerJobLimit",
  "AssocMaxCpuPerJobLimit",
  "AssocMaxGRESPerJob",
  "AssocMaxMemPerJob",
  "AssocMaxNodesPerJob",
  "AssocMaxWallDurationPerJobLimit",
)
SQUEUE_PATIENCE_S = 600  # how long squeue may fail in a row before the launcher gives up
ENDED = (
  "BOOT_FAIL",
  "CANCELLED",
  "COMPLETED",
  "DEADLINE",
  "FAILED",
  "NODE_FAIL",
  "OUT_OF_MEMORY",
  "PREEMPTED",
  "TIMEOUT",
)
OWN_KEYS = (
  "poll_s",
)  # keys of conf/hydra/launcher/slurm.yaml that are the launcher's, not sbatch's


class SlurmError(CbexpError, RuntimeError):
  """A Slurm request refused, or Slurm's commands missing or failing; one line."""


def slurm(*argv, timeout=60):
  """Runs one of Slurm's commands -> its stdout; SlurmError (one line) if it is missing or fails."""
  if shutil.which(argv[0]) is None:
    raise SlurmError(
      f"hydra/launcher=slurm needs Slurm's commands on this machine: {argv[0]} not found"
    )
  try:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    raise SlurmError(f"{argv[0]} did not answer within {timeout} s") from None
  if result.returncode != 0:
    lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"]
    raise SlurmError(f"{' '.join(argv[:2])}: {lines[-1].strip()}")
  return result.stdout


# --- what the partition offers --------------------------------------------------------------------


@dataclasses.dataclass
class Node:
  name: str
  cpus: int
  memory_mb: int
  gpus: int
  max_minutes: float  # the partition's time limit


def minutes(limit):
  """Slurm's time limit text ("infinite", "30", "1:00:00", "2-00:00:00") -> minutes."""
  if limit in ("infinite", "UNLIMITED", "NONE", ""):
    return float("inf")
  days, _, clock = limit.rpartition("-")
  parts = [int(p) for p in clock.split(":")]
  if days:  # D-HH[:MM[:SS]]
    parts += [0] * (3 - len(parts))
    return int(days) * 1440 + parts[0] * 60 + parts[1] + parts[2] / 60
  if len(parts) == 3:  # HH:MM:SS
    return parts[0] * 60 + parts[1] + parts[2] / 60
  return parts[0] + (parts[1] / 60 if len(parts) == 2 else 0)  # MM[:SS]


def gpu_count(gres):
  """GPUs in sinfo's GRES column, e.g. "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:1" -> 4, 3; "(null)"
  -> 0."""
  return sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def partition_nodes(partition=None):
  """-> (partition name, [Node]) of ``partition``, or of the cluster's default partition."""
  rows = [
    line.split("|") for line in slurm("sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%l").splitlines()
  ]
  partitions = {row[0].rstrip("*") for row in rows}
  if partition is None:
    default = [row[0] for row in rows if row[0].endswith("*")]
    if not default:
      raise SlurmError(
        "the cluster has no default partition: set hydra.launcher.partition "
        f"(partitions: {', '.join(sorted(partitions))})"
      )
    partition = default[0].rstrip("*")
  if partition not in partitions:
    raise SlurmError(
      f"hydra.launcher.partition={partition}: no such partition "
      f"(partitions: {', '.join(sorted(partitions)) or 'none'})"
    )
  nodes = {
    row[1]: Node(row[1], int(row[2]), int(row[3].rstrip("+")), gpu_count(row[4]), minutes(row[5]))
    for row in rows
    if row[0].rstrip("*") == partition
  }
  return partition, list(nodes.values())


def request_problem(params, partition, nodes):
  """Why the request of the launcher config ``params`` can never run on ``nodes`` (one line,
  saying what to set), or None."""
  tasks = int(params.get("tasks_per_node") or 1)
  cpus = int(params.get("cpus_per_task") or 1) * tasks
  memory_mb = int(float(params.get("mem_gb") or 0) * 1024)
  gpus = int(params.get("gpus_per_node") or 0) or int(params.get("gpus_per_task") or 0) * tasks
  fields = ("cpus", "memory_mb", "gpus", "max_minutes")
  most = Node("", *(max(getattr(n, f) for n in nodes) for f in fields))
  where = f"partition {partition}"
  if gpus > most.gpus:
    key = "gpus_per_node" if params.get("gpus_per_node") else "gpus_per_task"
    has = f"has at most {most.gpus} GPUs per node" if most.gpus else "has no GPUs"
    return (
      f"hydra.launcher.{key}={params.get(key)}: {where} {has}; on CPU nodes use "
      f"hydra/launcher=slurm_cpu (or hydra.launcher.gpus_per_node=null "
      f"hydra.launcher.gpus_per_task=null)"
    )
  if cpus > most.cpus:
    return (
      f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')} x tasks_per_node={tasks} = "
      f"{cpus} CPUs per node: the nodes of {where} have at most {most.cpus}; set "
      f"hydra.launcher.cpus_per_task"
    )
  if memory_mb > most.memory_mb:
    return (
      f"hydra.launcher.mem_gb={params.get('mem_gb')}: the nodes of {where} have at most "
      f"{most.memory_mb // 1024} GB; set hydra.launcher.mem_gb"
    )
  if float(params.get("timeout_min") or 0) > most.max_minutes:
    return (
      f"hydra.launcher.timeout_min={params.get('timeout_min')}: {where} allows at most "
      f"{most.max_minutes:g} minutes; set hydra.launcher.timeout_min"
    )
  fit = [n for n in nodes if n.cpus >= cpus and n.memory_mb >= memory_mb and n.gpus >= gpus]
  wanted = int(params.get("nodes") or 1)
  if len(fit) < wanted:
    return (
      f"hydra.launcher.nodes={wanted}: {where} has {len(fit)} node(s) with {cpus} CPUs, "
      f"{memory_mb // 1024} GB and {gpus} GPUs; set hydra.launcher.nodes"
    )
  return None


def check_request(params):
  """SlurmError (one line) if ``params`` (the launcher config) can never run on its partition."""
  partition, nodes = partition_nodes(params.get("partition"))
  if not nodes:
    raise SlurmError(f"partition {partition} has no nodes")
  problem = request_problem(params, partition, nodes)
  if problem:
    raise SlurmError(problem)


try:
  from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
  Callback = object


class LauncherCheck(Callback):
  """hydra.callbacks entry (conf/config.yaml), before the sweep's MLflow run is created: refuses
  a Slurm request that can never run, in one line, before anything exists."""

  def on_multirun_start(self, config, **kwargs):
    launcher = config.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith("cbexp_slurm.slurm_launcher.SlurmLauncher"):
      return
    try:
      check_request(OmegaConf.to_container(launcher, resolve=True))
    except SlurmError as error:  # Hydra turns a callback's exception into a warning
      print(f"error: {error}", file=sys.stderr)
      sys.exit(USER_ERROR)


# --- the launcher ---------------------------------------------------------------------------------


class SlurmLauncher(submitit_launcher.SlurmLauncher):
  """hydra-submitit-launcher's SlurmLauncher that follows its jobs itself (module docstring)."""

  def __init__(self, poll_s=10, **params):
    super().__init__(**params)
    self.poll_s = float(poll_s)

  def __call__(self, *args, **kwargs):
    """One job, on its node: a run that failed fails the Slurm job (non-zero exit status), with
    the job's one line as the error submitit records."""
    result = super().__call__(*args, **kwargs)
    if result.status == JobStatus.FAILED:
      raise sweeps.JobFailed(one_line(result._return_value)) from None
    return result

  def launch(self, job_overrides, initial_job_idx):
    import submitit

    executor = self._executor(submitit)
    sweep_dir = pathlib.Path(str(self.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    arguments = [
      (list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{i}", _state())
      for i, overrides in enumerate(job_overrides)
    ]
    try:
      # submitit prints sbatch's stderr as it raises: the one line below says it.
      with contextlib.redirect_stderr(io.StringIO()):
        jobs = executor.map_array(self, *zip(*arguments))
    except submitit.core.utils.FailedJobError as error:
      lines = [x.strip() for x in str(error).splitlines() if "error" in x.lower()] or ["?"]
      reason = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", lines[-1])
      raise SlurmError(f"sbatch refused the jobs: {reason}") from None
    sweeps.count_launched(len(jobs))
    names = [" ".join(overrides) for overrides in job_overrides]
    try:
      return follow(jobs, names, self.poll_s)
    except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (cbexp.errors.Terminated)
      cause = "SIGTERM" if isinstance(interruption, Terminated) else "Ctrl-C"
      ids = [job.job_id for job in jobs]
      _cancel(ids)
      raise sweeps.SweepStopped(f"{cause} (Slurm jobs {', '.join(ids)} cancelled)") from None

  def _executor(self, submitit):
    """submitit's executor with this config's parameters (hydra-submitit-launcher's names:
    BaseQueueConf's as they are, the others prefixed ``slurm_``)."""
    params = dict(self.params)
    folder = params.pop("submitit_folder")
    init = (
      {"slurm_max_num_timeout": params.pop("max_num_timeout")}
      if "max_num_timeout" in params
      else {}
    )
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
      **{(k if k in shared else f"slurm_{k}"): v for k, v in params.items()}
    )
    return executor


def _state():
  from hydra.core.singleton import Singleton

  return Singleton.get_state()


def _cancel(ids):
  """scancel, best effort: the jobs may have ended meanwhile."""
  try:
    slurm("scancel", *ids, timeout=30)
  except SlurmError:
    pass


def one_line(error):
  """The message of a job's exception (JobFailed carries the job's one line)."""
  text = str(error).strip()
  return text.splitlines()[0] if text else error.__class__.__name__


def job_states(ids):
  """{job id: (state, reason)} of the jobs ``ids`` as squeue lists them, ended ones included
  (squeue keeps a job MinJobAge seconds after its end, without accounting)."""
  roots = sorted({job_id.split("_")[0] for job_id in ids})
  out = slurm("squeue", "-h", "-r", "--states=all", "-j", ",".join(roots), "-o", "%i|%T|%r")
  states = {}
  for line in out.splitlines():
    job_id, state, reason = (line.split("|") + ["", ""])[:3]
    states[job_id.strip()] = (state.strip(), reason.strip())
  return states


def task_result(job, task):
  """("success", JobReturn) or ("error", traceback text) that the task wrote, or None."""
  path = job.task(task).paths.result_pickle
  if not path.is_file():
    return None
  try:
    with open(path, "rb") as f:
      return pickle.load(f)
  except (OSError, EOFError, pickle.UnpicklingError):
    return None  # being written


def error_line(traceback_text):
  """The last line of a task's traceback, without the exception's class when it is ours."""
  last = traceback_text.strip().splitlines()[-1] if traceback_text.strip() else "no message"
  return re.sub(r"^[\w.]*JobFailed: ", "", last)


class FailedJob(JobReturn):
  """A failed job's JobReturn: its line is printed already (Hydra's own prints the overrides)."""

  @property
  def return_value(self):
    raise self._return_value

  @return_value.setter
  def return_value(self, value):
    self._return_value = value


def follow(jobs, names, poll_s):
  """Waits for ``jobs`` (submitit's, one per sweep job, ``names`` their overrides) -> their
  JobReturns; prints one line per job that failed or never starts."""
  results, ended_polls, unanswered = {}, {}, 0
  while len(results) < len(jobs):
    try:
      states = job_states([job.job_id for job in jobs])
      unanswered = 0
    except SlurmError:  # slurmctld busy or restarting: the jobs run on; ask again
      unanswered += 1
      if unanswered * poll_s > SQUEUE_PATIENCE_S:
        raise
      time.sleep(poll_s)
      continue
    for index, job in enumerate(jobs):
      if index in results:
        continue
      state, reason = states.get(job.job_id, ("", ""))
      outcome = job_outcome(job, state, reason, ended_polls)
      if outcome is None:
        continue
      how, outcome = outcome
      if how == "failed":
        print(f"error: job {job.job_id} ({names[index]}): {outcome}", file=sys.stderr)
        outcome = FailedJob(
          overrides=names[index].split(),
          status=JobStatus.FAILED,
          _return_value=sweeps.JobFailed(f"job {job.job_id} failed"),
        )
      results[index] = outcome
    if len(results) < len(jobs):
      time.sleep(poll_s)
  return [results[i] for i in range(len(jobs))]


def job_outcome(job, state, reason, ended_polls):
  """("done", the job's JobReturn), ("failed", one line), or None while it runs."""
  if state == "PENDING" and reason in NEVER_STARTS:
    _cancel([job.job_id])
    return "failed", (
      f"cannot start: Slurm keeps it pending with Reason={reason} (no node of the partition "
      "can give what it asks for); cancelled"
    )
  outcomes = [task_result(job, task) for task in range(job.num_tasks)]
  if all(outcomes):
    errors = [
      f"task {t}: " * (len(outcomes) > 1) + error_line(o[1])
      for t, o in enumerate(outcomes)
      if o[0] != "success"
    ]
    return ("failed", "; ".join(errors)) if errors else ("done", outcomes[0][1])
  if state and state not in ENDED:
    return None
  # Ended (or no longer listed) without every result: once more, for files still arriving.
  ended_polls[job.job_id] = ended_polls.get(job.job_id, 0) + 1
  if ended_polls[job.job_id] < 2:
    return None
  missing = [str(t) for t, o in enumerate(outcomes) if o is None]
  errors = [
    f"task {t}: {error_line(o[1])}" for t, o in enumerate(outcomes) if o and o[0] != "success"
  ]
  said = f"Slurm state {state}" if state else "no longer listed by Slurm"
  ended = f"task {', '.join(missing)} ended without a result ({said}; log {job.paths.stderr})"
  return "failed", "; ".join([ended] + errors)
