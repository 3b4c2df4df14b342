"""MLflow bookkeeping for ``cbexp.run``: the tracking URI, one run per training job that a
restarted job resumes, sweep grouping, and retries for the sqlite store.

* Default store: ``sqlite:///<working directory>/mlflow.db`` (config ``tracking.uri: null``).
* A run's id is kept in ``<run_dir>/mlflow_run.json`` next to its checkpoints: the same command
  started again after a crash resumes the same MLflow run.
* Multirun: ``SweepCallback`` (a Hydra callback, see conf/config.yaml) creates one parent run
  per sweep in the launching process and writes ``<sweep dir>/mlflow_sweep.json``; every job
  (possibly in another process: joblib, submitit) reads it and tags its run with ``sweep_id``
  and ``mlflow.parentRunId``. MLflow's ``nested=True`` works only inside one process.
* Several processes may write one sqlite file: MLflow sets sqlite's busy timeout (20 s), so a
  writer waits for the lock; only the store's creation needs cbexp's own lock (``open_store``).
"""
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import urllib.error
import urllib.request
import unittest.mock
import uuid

from omegaconf import DictConfig, OmegaConf

from cbexp import files

RUN_FILE = "mlflow_run.json"
SWEEP_FILE = "mlflow_sweep.json"
REMEDY = ("restore it, or delete it to go on in a new MLflow run (the checkpoints are kept)")


class TrackingError(ValueError):
  """The tracking store cannot be used; the message says which and why."""


# --- run directories ------------------------------------------------------------------------

def run_name(override_dirname):
  """A directory name for a run from its command-line overrides (``hydra.job.override_dirname``):
  identical commands give identical names, hence the same run directory (resume)."""
  if not override_dirname:
    return "default"
  name = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", override_dirname).strip("_")
  if len(name) > 100:
    name = name[:80] + "_" + hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
  return name


OmegaConf.register_new_resolver("cbexp.run_name", run_name, replace=True)


# --- the store -------------------------------------------------------------------------------

def default_uri(cwd=None):
  """The default store of every command: $MLFLOW_TRACKING_URI, else the sqlite file
  ``mlflow.db`` in the working directory (artifacts then go to ``./mlruns``)."""
  return os.environ.get("MLFLOW_TRACKING_URI") or \
      f"sqlite:///{pathlib.Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def resolve_uri(uri):
  """Config ``tracking.uri`` -> a tracking URI (null: ``default_uri()``)."""
  return str(uri) if uri else default_uri()


# Store kinds MLflow 3 accepts as a tracking URI (a database, a server, or a local folder).
URI_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


@contextlib.contextmanager
def fluent_store(uri):
  """Points MLflow's fluent API (``start_run``, ``log_model``, ``register_model``, ``models:/``
  and logged-model downloads), which reads the process-wide tracking and registry URIs, at
  ``uri`` inside the block, through their environment variables, restored after."""
  with unittest.mock.patch.dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri):
    yield


def check_uri(uri, timeout=5.0):
  """Fails fast, with one line, if the store cannot be reached: before any training."""
  scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
  if scheme not in URI_SCHEMES:
    raise TrackingError(f"tracking.uri {uri}: unsupported scheme '{scheme}' "
                        f"({', '.join(URI_SCHEMES)})")
  if uri.startswith(("http://", "https://")):
    try:
      with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
        response.read()
    except (urllib.error.URLError, OSError) as error:
      reason = getattr(error, "reason", error)
      raise TrackingError(f"tracking.uri {uri}: MLflow server unreachable ({reason})") from None
  elif uri.startswith("sqlite:///"):
    database = pathlib.Path(uri[len("sqlite:///"):])
    folder = database.parent
    if not folder.is_dir():
      raise TrackingError(f"tracking.uri {uri}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
      raise TrackingError(f"tracking.uri {uri}: folder {folder} is not writable")
    if database.exists() and not (database.is_file() and os.access(database, os.R_OK | os.W_OK)):
      raise TrackingError(f"tracking.uri {uri}: {database} is not a readable and writable file")


def open_store(uri):
  """Creates (or migrates) the store and checks that it is an MLflow store, with one line if
  not. A sqlite store is created under an exclusive file lock (``<database>.lock``): processes
  started together on a fresh store would otherwise run MLflow's schema migration at the same
  time and leave it half-migrated. -> an MlflowClient."""
  from mlflow.tracking import MlflowClient
  lock = None
  if uri.startswith("sqlite:///"):
    import fcntl
    lock = open(uri[len("sqlite:///"):] + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
  try:
    client = MlflowClient(tracking_uri=uri)  # builds (creates, migrates) the store
    client.search_experiments(max_results=1)
  except Exception as error:
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    if "_alembic_tmp" in message:
      raise TrackingError(f"tracking.uri {uri}: the store is half-migrated (an interrupted "
                          f"schema migration); move it away and start again, or repair it "
                          f"with `mlflow db upgrade {uri}`") from None
    raise TrackingError(f"tracking.uri {uri}: not a usable MLflow store ({message[:300]})") \
        from None
  finally:
    if lock is not None:
      lock.close()
  return client


# MLflow 3's UI opens an experiment in its GenAI view unless the experiment says what it is; this
# kind opens the "Model training" view (runs, training curves, models).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client, name):
  experiment = client.get_experiment_by_name(name)
  if experiment is None:
    try:
      return client.create_experiment(name, tags=EXPERIMENT_KIND)
    except Exception:  # created meanwhile by a parallel job
      experiment = client.get_experiment_by_name(name)
      if experiment is None:
        raise
  for key, value in EXPERIMENT_KIND.items():
    if key not in experiment.tags:
      client.set_experiment_tag(experiment.experiment_id, key, value)
  return experiment.experiment_id


# --- what a run records ----------------------------------------------------------------------

def flatten(cfg, prefix=""):
  """Resolved config -> {"entropy.name": "charm", "trainer.steps": "2000000", ...}."""
  container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
  flat = {}
  for key, value in container.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = str(value)
  return flat


def git_commit():
  repo = pathlib.Path(__file__).resolve().parent.parent
  try:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def version_tags():
  from importlib.metadata import version
  return {"git_commit": git_commit(), "tf_version": version("tensorflow"),
          "tfc_version": version("tensorflow-compression"),
          "python_version": sys.version.split()[0]}


def image_set_input(name, paths, context):
  """An MLflow dataset input (``log_inputs``) for image files: their name, a digest of their file
  names and bytes (two runs on the same images show the same digest), the folder as source."""
  from mlflow.entities import Dataset, DatasetInput, InputTag
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode() + b"\0")
    digest.update(pathlib.Path(path).read_bytes())
  folders = sorted({str(pathlib.Path(p).resolve().parent) for p in paths})
  source = {"uri": folders[0] if len(folders) == 1 else folders,
            "files": [os.path.basename(p) for p in paths]}
  dataset = Dataset(name=name, digest=digest.hexdigest()[:16], source_type="local",
                    source=json.dumps(source), profile=json.dumps({"num_images": len(paths)}))
  return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def tfds_input(name, split, context):
  from mlflow.entities import Dataset, DatasetInput, InputTag
  source = json.dumps({"uri": f"tfds://{name}/{split}"})
  dataset = Dataset(name=f"{name}/{split}", digest=hashlib.sha256(source.encode()).hexdigest()[:16],
                    source_type="tfds", source=source)
  return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def command_line():
  """The command as the user typed it, e.g. ``python -m cbexp.run entropy=charm lmbda=0.013``."""
  import shlex
  program = sys.argv[0]
  if program.endswith(".py") and "cbexp" in pathlib.Path(program).parts:
    module = ".".join(pathlib.Path(program).with_suffix("").parts[-2:])  # cbexp/run.py
    program = f"python -m {module}"
  return " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])


def system_tags(tags):
  """``tags`` plus MLflow's own run context (``mlflow.user``, ``mlflow.source.name``, its type and
  git commit), as ``mlflow.start_run`` would set them."""
  from mlflow.tracking.context.registry import resolve_tags
  return resolve_tags(tags)


# --- runs that survive restarts ----------------------------------------------------------------

def start_or_resume(client, experiment_name, run_dir, tags, run_name=None):
  """-> (run_id, resumed). Resumes the run recorded in ``run_dir`` if the store still has it."""
  import mlflow
  record = pathlib.Path(run_dir) / RUN_FILE
  if record.is_file():
    run_id = files.read_record(record, ["run_id"], remedy=REMEDY)["run_id"]
    try:
      run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
      run = None
    if run is not None and run.info.lifecycle_stage == "active":
      client.update_run(run_id, status="RUNNING")
      return run_id, True
    logging.getLogger(__name__).warning(
        f"warning: MLflow run {run_id} from {record} is not in the store; starting a new one")
  experiment_id = get_or_create_experiment(client, experiment_name)
  run = client.create_run(experiment_id, tags=tags, run_name=run_name)
  record.parent.mkdir(parents=True, exist_ok=True)
  files.write_atomic(record, json.dumps({"run_id": run.info.run_id,
                                         "experiment_id": experiment_id}))
  return run.info.run_id, False


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
    return {"sweep_id": os.environ["CBEXP_SWEEP_ID"],
            "parent_run_id": os.environ.get("CBEXP_PARENT_RUN_ID")}
  raise TrackingError(f"multirun job without sweep record {path} (is SweepCallback configured "
                      f"in hydra.callbacks?)")


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
      previous = files.read_record(record, ["sweep_id", "parent_run_id"]) \
          if record.is_file() else None
    except ValueError as error:  # TrackingError, RecordError
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    sweep_dir.mkdir(parents=True, exist_ok=True)
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
    parent = client.create_run(experiment_id, run_name=f"sweep {sweep_id}",
                   tags={"sweep_id": sweep_id, "run_type": "sweep_parent",
                         "sweep_overrides": overrides, "git_commit": git_commit()})
    files.write_atomic(record, json.dumps(
        {"sweep_id": sweep_id, "parent_run_id": parent.info.run_id, "tracking_uri": uri}))
    self._announce(sweep_id, parent.info.run_id, uri, "new")

  def _announce(self, sweep_id, parent_run_id, uri, state):
    self._parent_run_id = parent_run_id
    CURRENT_SWEEP.update(sweep_id=sweep_id, parent_run_id=parent_run_id, uri=uri,
                         experiment=str(self._experiment), sweep_dir=str(self._sweep_dir))
    os.environ["CBEXP_SWEEP_ID"] = sweep_id
    os.environ["CBEXP_PARENT_RUN_ID"] = parent_run_id
    print(f"sweep_id {sweep_id} ({state}; MLflow parent run {parent_run_id} in {uri})",
          file=sys.stderr)

  def on_multirun_end(self, config, **kwargs):
    pass  # print_sweep_summary ends the parent run, also when a job failed (Hydra then raises)


# The sweep started by this process (SweepCallback), for the summary at its end.
CURRENT_SWEEP = {}


def print_sweep_summary():
  """After a multirun (also one whose jobs failed): jobs finished and failed, the sweep id and
  the analysis command to run next; ends the parent run (FAILED if a job did not finish).

  Jobs are the sweep directory's job folders (Hydra writes ``.hydra/`` in each): finished ones
  hold ``complete.json`` (cbexp.run). A job that failed before its MLflow run existed (bad
  input) is counted too."""
  if not CURRENT_SWEEP:
    return
  from mlflow.tracking import MlflowClient
  sweep = dict(CURRENT_SWEEP)
  CURRENT_SWEEP.clear()
  jobs = [d for d in pathlib.Path(sweep["sweep_dir"]).iterdir() if (d / ".hydra").is_dir()]
  finished = sum((d / "complete.json").is_file() for d in jobs)
  counts = f"{len(jobs)} jobs: {finished} finished, {len(jobs) - finished} failed or stopped"
  try:
    client = MlflowClient(tracking_uri=sweep["uri"])
    client.set_terminated(sweep["parent_run_id"],
          "FINISHED" if finished == len(jobs) else "FAILED")
  except Exception as error:  # the summary must not hide what happened in the sweep
    counts += f" (parent run not updated: {str(error).splitlines()[0]})"
  uri = "" if sweep["uri"] == default_uri() else f" tracking.uri={sweep['uri']}"
  print(f"sweep {sweep['sweep_id']} ended: {counts} (in {sweep['sweep_dir']}; MLflow parent "
        f"run {sweep['parent_run_id']} in {sweep['uri']})\n"
        f"next: python -m cbexp.analysis sweep_id={sweep['sweep_id']}{uri}", file=sys.stderr)
