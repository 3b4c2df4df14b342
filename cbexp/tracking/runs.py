"""An MLflow run per training job: its directory name, its record (tags, params, dataset inputs,
metrics) and resuming it after a restart.

A run's id is kept in ``<run_dir>/mlflow_run.json`` next to its checkpoints, so the same command
started again resumes the same MLflow run; ``MetricLog`` never logs a step twice.
"""

import hashlib
import json
import logging
import math
import os
import pathlib
import subprocess
import sys
import time

from omegaconf import DictConfig, OmegaConf

from cbexp import files
from cbexp.tracking.store import get_or_create_experiment

RUN_FILE = "mlflow_run.json"
REMEDY = "restore it, or delete it to go on in a new MLflow run (the checkpoints are kept)"


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
  repo = pathlib.Path(__file__).resolve().parents[2]
  try:
    return subprocess.run(
      ["git", "-C", str(repo), "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def version_tags():
  from importlib.metadata import version

  return {
    "git_commit": git_commit(),
    "tf_version": version("tensorflow"),
    "tfc_version": version("tensorflow-compression"),
    "python_version": sys.version.split()[0],
  }


def image_set_input(name, paths, context):
  """An MLflow dataset input (``log_inputs``) for image files: their name, a digest of their file
  names and bytes (two runs on the same images show the same digest), the folder as source."""
  from mlflow.entities import Dataset, DatasetInput, InputTag

  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode() + b"\0")
    digest.update(pathlib.Path(path).read_bytes())
  folders = sorted({str(pathlib.Path(p).resolve().parent) for p in paths})
  source = {
    "uri": folders[0] if len(folders) == 1 else folders,
    "files": [os.path.basename(p) for p in paths],
  }
  dataset = Dataset(
    name=name,
    digest=digest.hexdigest()[:16],
    source_type="local",
    source=json.dumps(source),
    profile=json.dumps({"num_images": len(paths)}),
  )
  return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def tfds_input(name, split, context):
  from mlflow.entities import Dataset, DatasetInput, InputTag

  source = json.dumps({"uri": f"tfds://{name}/{split}"})
  dataset = Dataset(
    name=f"{name}/{split}",
    digest=hashlib.sha256(source.encode()).hexdigest()[:16],
    source_type="tfds",
    source=source,
  )
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
      f"warning: MLflow run {run_id} from {record} is not in the store; starting a new one"
    )
  experiment_id = get_or_create_experiment(client, experiment_name)
  run = client.create_run(experiment_id, tags=tags, run_name=run_name)
  record.parent.mkdir(parents=True, exist_ok=True)
  files.write_atomic(
    record, json.dumps({"run_id": run.info.run_id, "experiment_id": experiment_id})
  )
  return run.info.run_id, False


# --- what a training job logs: its Hydra choices, its data, its metrics ----------------------


def config_choice(group, default):
  """The option chosen for a config group (``transform=tiny`` -> "tiny") under Hydra."""
  from hydra.core.hydra_config import HydraConfig

  if HydraConfig.initialized():
    return HydraConfig.get().runtime.choices.get(group) or default
  return default


def task_overrides():
  """This job's command-line overrides (in a sweep: this job's, not the whole grid)."""
  from hydra.core.hydra_config import HydraConfig

  return " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""


class MetricLog:
  """Buffers metrics and writes them to MLflow in one batch per checkpoint.
  ``logged_through``: {key: last step already in the run}; metrics at those steps or earlier are
  dropped, so a resumed run never logs a step twice."""

  def __init__(self, client, run_id, logged_through=None):
    """``client`` None: a log that keeps nothing (a worker other than a multi-worker chief)."""
    self.client, self.run_id, self.pending = client, run_id, []
    self.logged_through = logged_through or {}

  def add(self, metrics, step):
    if self.client is None:
      return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    self.pending += [
      Metric(k, float(v), now, int(step))
      for k, v in metrics.items()
      if v is not None and not math.isnan(float(v)) and int(step) > self.logged_through.get(k, -1)
    ]

  def flush(self):
    if self.pending:  # MlflowClient.log_batch splits what exceeds MLflow's batch limits
      self.client.log_batch(self.run_id, metrics=self.pending)
      self.pending = []


def logged_steps(client, run_id):
  """{metric key: the last step the run has logged for it}."""
  keys = client.get_run(run_id).data.metrics
  return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def describe_data(cfg, plan):
  """-> (MLflow dataset inputs, the run's description, how many evaluation images are training
  images). Named by what they are (``scikit-image photos``, ``kodak_train``), with a digest of
  their bytes, so the dashboard shows when a run evaluates on what it trained on."""
  names = {"skimage": "scikit-image photos"}
  if cfg.dataset.source == "tfds":
    inputs = [tfds_input(cfg.dataset.tfds_name, cfg.dataset.train_split, "training")]
    train_text, train_paths = f"{cfg.dataset.tfds_name} (tensorflow-datasets)", []
  else:
    train_paths = plan.train_paths + plan.val_paths
    name = names.get(cfg.dataset.source, cfg.dataset.name)
    inputs = [image_set_input(name, plan.train_paths, "training")]
    if plan.val_paths:
      inputs.append(image_set_input(name, plan.val_paths, "validation"))
    train_text = f"{name} ({len(plan.train_paths)} images, {len(plan.val_paths)} validating)"
  eval_name = names.get(cfg.eval.source, cfg.eval.set)
  inputs.append(image_set_input(eval_name, plan.eval_paths, "evaluation"))
  trained_on = {str(pathlib.Path(p).resolve()) for p in train_paths}
  overlap = sum(str(pathlib.Path(p).resolve()) in trained_on for p in plan.eval_paths)
  description = (
    f"{cfg.entropy.name}, lmbda {cfg.lmbda}, {cfg.trainer.steps} steps. Trains on "
    f"{train_text}; evaluates with real .cbx bitstreams on {eval_name} "
    f"({len(plan.eval_paths)} images)."
  )
  if overlap:
    description += (
      f" {overlap} of the {len(plan.eval_paths)} evaluation images are training "
      f"images: the numbers show that the pipeline works, not how good the model is."
    )
  return inputs, description, overlap


def log_params(client, run_id, cfg):
  from mlflow.entities import Param

  client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flatten(cfg).items()])
