"""Hydra multiruns in MLflow: one parent run per sweep, its ``sweep_id`` on every job's run.

``SweepCallback`` (hydra.callbacks in conf/config.yaml) creates the parent run in the launching
process and writes ``<sweep dir>/mlflow_sweep.json``, which every job reads, in whatever process
the launcher starts it (MLflow's ``nested=True`` works only inside one process).
``print_sweep_summary`` ends the sweep: jobs finished and failed, and the analysis to run next.
"""

import json
import os
import pathlib
import sys
import uuid

from cbexp import files
from cbexp.config import SWEEP_NAME_VARIABLE
from cbexp.tracking.runs import command_line, git_commit
from cbexp.tracking.store import (
  TrackingError,
  check_uri,
  default_uri,
  get_or_create_experiment,
  open_store,
  resolve_uri,
)

SWEEP_FILE = "mlflow_sweep.json"


class JobFailed(RuntimeError):
  """A sweep job that failed; its message is the job's one line (already printed by the job, or
  by the launcher that followed it). The sweep's other jobs go on; its summary counts this."""


class SweepStopped(RuntimeError):
  """The launching process was interrupted (Ctrl-C, SIGTERM); the message says what happened to
  the jobs it launched."""


def sweep_info_or_none():
  """sweep_info(), or None outside a multirun and when the record is missing."""
  try:
    return sweep_info()
  except Exception:
    return None


def sweep_info():
  """{sweep_id, parent_run_id} when this job is part of a Hydra multirun, else None."""
  from hydra.core.hydra_config import HydraConfig
  from hydra.types import RunMode

  if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
    return None
  path = pathlib.Path(HydraConfig.get().sweep.dir) / SWEEP_FILE
  if path.is_file():
    return files.read_record(path, ["sweep_id"])
  if os.environ.get("CBEXP_SWEEP_ID"):
    return {
      "sweep_id": os.environ["CBEXP_SWEEP_ID"],
      "parent_run_id": os.environ.get("CBEXP_PARENT_RUN_ID"),
    }
  raise TrackingError(
    f"multirun job without sweep record {path} (is SweepCallback configured in hydra.callbacks?)"
  )


try:
  from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
  Callback = object


class SweepCallback(Callback):
  """Creates the sweep's parent MLflow run before the launcher starts any job."""

  def on_multirun_start(self, config, **kwargs):
    uri = resolve_uri(config.tracking.uri)
    sweep_dir = pathlib.Path(str(config.hydra.sweep.dir))
    record = sweep_dir / SWEEP_FILE
    try:
      check_uri(uri)
      client = open_store(uri)
      previous = (
        files.read_record(record, ["sweep_id", "parent_run_id"]) if record.is_file() else None
      )
    except ValueError as error:  # TrackingError, RecordError
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # The jobs' sweep directory is this one (config.sweep_name), whatever their own overrides.
    os.environ[SWEEP_NAME_VARIABLE] = sweep_dir.name
    self._client = client
    self._experiment = config.tracking.experiment
    self._sweep_dir = sweep_dir
    if previous:  # the same sweep directory again: its jobs resume, so does the sweep
      client.update_run(previous["parent_run_id"], status="RUNNING")
      self._announce(previous["sweep_id"], previous["parent_run_id"], uri, "resumed")
      return
    sweep_id = f"{sweep_dir.name}-{uuid.uuid4().hex[:8]}"
    experiment_id = get_or_create_experiment(client, config.tracking.experiment)
    overrides = " ".join(config.hydra.overrides.task)
    parent = client.create_run(
      experiment_id,
      run_name=f"sweep {sweep_id}",
      tags={
        "sweep_id": sweep_id,
        "run_type": "sweep_parent",
        "sweep_overrides": overrides,
        "git_commit": git_commit(),
      },
    )
    files.write_atomic(
      record,
      json.dumps({"sweep_id": sweep_id, "parent_run_id": parent.info.run_id, "tracking_uri": uri}),
    )
    self._announce(sweep_id, parent.info.run_id, uri, "new")

  def _announce(self, sweep_id, parent_run_id, uri, state):
    self._parent_run_id = parent_run_id
    CURRENT_SWEEP.update(
      sweep_id=sweep_id,
      parent_run_id=parent_run_id,
      uri=uri,
      experiment=str(self._experiment),
      sweep_dir=str(self._sweep_dir),
    )
    os.environ["CBEXP_SWEEP_ID"] = sweep_id
    os.environ["CBEXP_PARENT_RUN_ID"] = parent_run_id
    print(
      f"sweep_id {sweep_id} ({state}; MLflow parent run {parent_run_id} in {uri})", file=sys.stderr
    )

  def on_multirun_end(self, config, **kwargs):
    pass  # print_sweep_summary ends the parent run, also when a job failed (Hydra then raises)


# The sweep started by this process (SweepCallback), for the summary at its end.
CURRENT_SWEEP = {}


def count_launched(jobs):
  """A launcher submitted ``jobs`` jobs of the current sweep: the summary counts them even if
  they never start (no job folder)."""
  CURRENT_SWEEP["launched"] = CURRENT_SWEEP.get("launched", 0) + jobs


def print_sweep_summary(problem=None, stopped=None):
  """After a multirun (also one that failed or was stopped): ends the parent run (FINISHED, FAILED
  if a job did not finish or ``problem`` (one line) stopped the sweep, KILLED if ``stopped``
  (one line: by what)) and says so: jobs finished and failed and the analysis to run next, or
  one line with what happened and the command that resumes the sweep. -> whether it printed
  (False outside a multirun).

  Jobs are the sweep directory's job folders (Hydra writes ``.hydra/`` in each; finished ones
  hold ``complete.json``, cbexp.run), or the jobs a launcher counted in ``launched`` when more
  (a Slurm job that never started has no folder)."""
  if not CURRENT_SWEEP:
    return False
  from mlflow.tracking import MlflowClient

  sweep = dict(CURRENT_SWEEP)
  CURRENT_SWEEP.clear()
  jobs = [d for d in pathlib.Path(sweep["sweep_dir"]).iterdir() if (d / ".hydra").is_dir()]
  finished = sum((d / "complete.json").is_file() for d in jobs)
  total = max(len(jobs), sweep.get("launched", 0))
  status = "KILLED" if stopped else "FINISHED" if finished == total and not problem else "FAILED"
  counts = f"{total} jobs: {finished} finished, {total - finished} failed or stopped"
  parent = f"MLflow parent run {sweep['parent_run_id']}"
  try:
    client = MlflowClient(tracking_uri=sweep["uri"])
    client.set_terminated(sweep["parent_run_id"], status)
    parent += f" {status}"
  except Exception as error:  # the summary must not hide what happened in the sweep
    parent += f" not updated: {str(error).splitlines()[0]}"
  if status == "FINISHED":
    uri = "" if sweep["uri"] == default_uri() else f" tracking.uri={sweep['uri']}"
    print(
      f"sweep {sweep['sweep_id']} ended: {counts} (in {sweep['sweep_dir']}; {parent} in "
      f"{sweep['uri']})\n"
      f"next: python -m cbexp.analysis sweep_id={sweep['sweep_id']}{uri}",
      file=sys.stderr,
    )
    return True
  if problem:
    line = f"error: {problem} (sweep {sweep['sweep_id']}: {counts}; {parent})"
  else:
    what = f"stopped by {stopped}" if stopped else "ended"
    line = (
      f"sweep {sweep['sweep_id']} {what}: {counts}; {parent}; the same command resumes it: "
      f"{command_line()}"
    )
  print(line, file=sys.stderr)
  return True
