"""``python -m cbexp.run [experiment=<preset>] [group=option ...] [key=value ...]``

Trains one model, evaluates it with real bitstreams and logs everything to MLflow:

1. validates the config (entropy model, data, patch size, schedule, tracking store) and stops
   with one line on stderr if something is wrong, before any training;
2. builds the model (``cbexp.config.build_model``) under the ``trainer.strategy`` of
   tf.distribute and trains it with the ``schedule``, validating every ``trainer.val_every`` steps
   and checkpointing every ``trainer.checkpoint_every`` steps into ``<run_dir>/checkpoints``;
3. evaluates on the ``eval`` images with real compress/decompress (``cbexp.evaluate``) and saves
   the model directory (``cbexp.model_io``).

The same command started again continues from the last checkpoint, in the same MLflow run:
the run directory is derived from the command's overrides (conf/config.yaml) and holds the run
id. Training metrics are sent to MLflow when a checkpoint is written, so a restarted run never
logs a step twice nor loses one. ``-m`` sweeps give one run per job, grouped by a parent run and
a ``sweep_id`` tag (``cbexp.tracking.SweepCallback``).

``trainer.strategy=multi_worker`` trains one run on several processes (machines, Slurm tasks),
each started with the same command: the cluster comes from ``TF_CONFIG`` or Slurm's environment
(``cbexp.training.cluster_resolver``). The chief alone talks to MLflow, writes the run directory
(mlflow_run.json, config.yaml, checkpoints, eval/, model/, complete.json) and evaluates after
training; the other workers restore from the chief's checkpoints (a filesystem all workers share)
and save theirs, a collective operation, into temporary folders they delete. A worker that dies
stops the others with one line (``WorkerLost``); the same commands resume the run.
"""
import datetime
import importlib.util
import json
import logging
import math
import os
import pathlib
import sys
import time
import typing

import hydra
from omegaconf import DictConfig, OmegaConf

from cbexp import files
from cbexp.training import checkpoints
from cbexp.tracking import runs as tracking
from cbexp.config import CONF_DIR, entropy_defaults

log = logging.getLogger(__name__)  # stderr and run.log (conf/hydra/job_logging/cbexp.yaml)
COMPLETE_FILE = "complete.json"
# What a job returns to a Hydra sweeper (eval.objective): the rate-distortion loss of the final
# evaluation (real bpp + lmbda * MSE) or one of cbexp.evaluate's summary values.
OBJECTIVES = ("rd_loss", "bpp", "psnr", "ms_ssim", "ms_ssim_db")


# Seconds between progress lines when stderr is not a terminal (cbexp.run.ProgressLog).
PROGRESS_SECONDS = 30.0
# From this many training steps on, a run without a GPU gets a notice that it will take long.
PAPER_SCALE_STEPS = 100_000


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


class TrainingDiverged(RuntimeError):
  """A non-finite loss or weights: the run stops and keeps its last (finite) checkpoint."""


class WorkerLost(RuntimeError):
  """A multi-worker run whose collectives failed because another worker died, hung or could
  not be reached: this worker stops (one line); the same commands resume the run."""


def check_numbers(cfg):
  """Types and ranges of the numeric settings, before anything is built (``lmbda=abc`` or
  ``trainer.steps=0`` must not reach TensorFlow)."""
  def number(key, value, integer=False, positive=True, optional=False):
    if optional and value is None:
      return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
      raise ConfigError(f"{key}={value!r}: must be {'an integer' if integer else 'a number'}")
    if positive and value <= 0:
      raise ConfigError(f"{key}={value!r}: must be positive")
  number("lmbda", cfg.lmbda)
  for key in ("steps", "batch_size", "patch_size", "log_every", "val_every", "checkpoint_every",
              "max_checkpoints"):
    number(f"trainer.{key}", cfg.trainer[key], integer=True)
  number("trainer.seed", cfg.trainer.seed, integer=True, positive=False)
  if cfg.trainer.seed < 0:
    raise ConfigError(f"trainer.seed={cfg.trainer.seed}: must be 0 or more")
  number("trainer.threads", cfg.trainer.get("threads"), integer=True, optional=True)
  number("trainer.collective_timeout_s", cfg.trainer.get("collective_timeout_s"), optional=True)
  for key, value in cfg.transform.items():
    values = list(value) if OmegaConf.is_list(value) else [value]
    for item in values:
      number(f"transform.{key}", item, integer=True)


# --- validation: everything that can be checked before training ----------------------------------

# Config options whose Hydra plugin is an optional extra: (group, option) -> (module, extra).
PLUGIN_EXTRAS = {("hydra/sweeper", "lr_search"): ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


def check_group_overrides(arguments):
  """Unknown options of a config group (``entropy=foo``) as one line, before Hydra's own
  multi-line message. Returns None when all are known."""
  groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
  for argument in arguments:
    if argument.startswith("-") or "=" not in argument:
      continue
    key, value = argument.split("=", 1)
    key = key.lstrip("+~").split("@")[0]
    plugin = PLUGIN_EXTRAS.get((key, value))
    if plugin and importlib.util.find_spec(plugin[0]) is None:
      return f"{key}={value} needs an optional extra: pip install -e \".[{plugin[1]}]\""
    if key not in groups or "(" in value:  # choice(...)/range(...) sweeps: left to Hydra
      continue
    known = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
    for option in value.split(","):
      if option and option != "null" and option not in known:
        what = "entropy model" if key == "entropy" else f"{key} option"
        return f"unknown {what} '{option}' (known: {', '.join(known)})"
  return None


def validate(cfg):
  """-> a plan (train/val/eval image paths, tracking URI). Raises a ValueError subclass with
  a one-line message on the first problem."""
  from cbexp import images
  from cbexp.training import data
  from cbexp.training import schedules
  known_entropy = sorted(p.stem for p in (CONF_DIR / "entropy").glob("*.yaml"))
  if cfg.entropy.name not in known_entropy:
    raise ConfigError(f"entropy.name: unknown entropy model '{cfg.entropy.name}' "
                      f"(known: {', '.join(known_entropy)})")
  check_numbers(cfg)
  trainer = cfg.trainer
  if trainer.patch_size < 64 or trainer.patch_size % 64:
    raise ConfigError(f"trainer.patch_size {trainer.patch_size}: must be a multiple of 64 "
                      f"(the transforms downsample by 64 in all)")
  if trainer.strategy not in ("default", "mirrored", "multi_worker"):
    raise ConfigError(f"trainer.strategy: unknown strategy '{trainer.strategy}' "
                      f"(default, mirrored, multi_worker)")
  if trainer.strategy == "multi_worker" and os.environ.get("TF_CONFIG"):
    try:
      tf_config = json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as error:
      raise ConfigError(f"TF_CONFIG: not valid JSON ({error})") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict) \
        or not isinstance(tf_config.get("task"), dict):
      raise ConfigError('TF_CONFIG: needs {"cluster": {"worker": ["host:port", ...]}, '
                        '"task": {"type": "worker", "index": i}}')
  slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
  if slurm_tasks > 1 and trainer.strategy != "multi_worker" and not os.environ.get("TF_CONFIG"):
    # Every task would train its own copy of the run into the same run directory.
    raise ConfigError(f"this Slurm job step has {slurm_tasks} tasks: one run on several tasks "
                      f"needs trainer.strategy=multi_worker (hydra/launcher=slurm_multi), "
                      f"separate runs one task each (hydra/launcher=slurm)")
  for key in ("log_every", "val_every", "checkpoint_every"):
    if trainer[key] < 1:
      raise ConfigError(f"trainer.{key} must be positive")
  schedules.check(cfg.schedule.boundaries,
                  [cfg.schedule.get("scale", 1.0) * r for r in cfg.schedule.rates])
  objective = cfg.eval.get("objective")
  if objective and objective not in OBJECTIVES:
    raise ConfigError(f"eval.objective: unknown objective '{objective}' "
                      f"({', '.join(OBJECTIVES)})")

  plan = {}
  dataset = cfg.dataset
  if dataset.source == "tfds":
    try:
      import tensorflow_datasets  # noqa: F401  (CLIC is downloaded on first use)
    except ImportError as error:
      raise ConfigError(f"dataset {dataset.name}: tensorflow-datasets missing ({error})") from None
  else:
    paths = images.config_image_paths(dataset.source, dataset.path, "dataset",
                                    dataset.get("files"))
    plan["train"], plan["val"] = data.split_train_val(paths, dataset.val_images)
    images.check_images(paths, trainer.patch_size)
  eval_paths = images.config_image_paths(cfg.eval.source, cfg.eval.path, "eval",
                                       cfg.eval.get("files"))
  if cfg.eval.max_images:
    eval_paths = eval_paths[:cfg.eval.max_images]
  images.check_images(eval_paths)  # a bad evaluation image must not wait for the end of training
  plan["eval"] = eval_paths
  plan["run_dir"] = run_directory(cfg)
  check_run_dir(plan["run_dir"])
  plan["uri"] = tracking.resolve_uri(cfg.tracking.uri)
  tracking.check_uri(plan["uri"])
  try:  # last: importing a model imports TensorFlow (seconds)
    hydra.utils.get_class(cfg.entropy._target_)
  except Exception as error:
    raise ConfigError(f"entropy._target_ {cfg.entropy._target_}: cannot import ({error})") \
        from None
  return plan


def check_run_dir(run_dir):
  """A run directory that exists as a file, or cannot be created or written, stops the run now."""
  if run_dir.exists() and not run_dir.is_dir():
    raise ConfigError(f"run_dir {run_dir}: exists and is not a folder")
  existing = next(p for p in [run_dir, *run_dir.parents] if p.exists())
  if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"run_dir {run_dir}: {existing} is not a writable folder")


# Settings that make a run's checkpoints what they are: a run directory resumes only these.
MODEL_KEYS = ("transform", "entropy", "lmbda")


def check_same_model(cfg, run_dir):
  """Refuses to resume a run directory whose saved config.yaml describes another model."""
  saved_path = run_dir / "config.yaml"
  if not saved_path.is_file():
    return
  try:
    saved = OmegaConf.load(saved_path)
  except Exception as error:
    raise ConfigError(f"{saved_path}: unreadable ({error.__class__.__name__}); restore it or "
                      f"use another run_dir") from None
  now = OmegaConf.to_container(cfg, resolve=True)
  before = OmegaConf.to_container(saved, resolve=True)
  # A key the saved config lacks (added to cbexp after the run started) means the entropy
  # class's default, which is what that run was built with.
  defaults = entropy_defaults((before.get("entropy") or {}).get("_target_", ""))
  old_values = tracking.flatten({k: before.get(k) for k in MODEL_KEYS})
  for key, value in tracking.flatten({k: now.get(k) for k in MODEL_KEYS}).items():
    old = old_values.get(key, defaults.get(key.partition("entropy.")[2]) if
                         key.startswith("entropy.") else None)
    if isinstance(old, tuple):
      old = list(old)
    if old != value:
      raise ConfigError(f"run_dir {run_dir} holds a run with {key}={old}, not {value}: use "
                        f"another run_dir, or the settings it was started with")


def config_choice(group, default):
  """The option chosen for a config group (``transform=tiny`` -> "tiny") under Hydra."""
  from hydra.core.hydra_config import HydraConfig
  if HydraConfig.initialized():
    return HydraConfig.get().runtime.choices.get(group) or default
  return default


def run_directory(cfg):
  if cfg.run_dir:
    return pathlib.Path(cfg.run_dir).expanduser().absolute()
  from hydra.core.hydra_config import HydraConfig
  if HydraConfig.initialized():
    return pathlib.Path(HydraConfig.get().runtime.output_dir).absolute()
  raise ConfigError("run_dir is not set (and no Hydra output directory: not under @hydra.main)")


class ProgressLog:
  """Training progress as log lines (stderr and run.log) when stderr is not a terminal (a batch
  job, a log file): every ``interval`` seconds and at the end, with the rate and ETA measured
  from the end of this process's first step, which includes TensorFlow's graph tracing. The
  part of tqdm's interface the loop uses; tqdm itself draws the bar in a terminal."""

  def __init__(self, total, start, interval=PROGRESS_SECONDS):
    self.total, self.done, self.interval = total, start, interval
    self.first_done = self.first_time = None
    self.last_report, self.postfix = time.monotonic(), {}

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if exc_info[0] is None and self.done == self.total:
      self.report()

  def set_postfix(self, refresh=False, **values):
    self.postfix = values

  def update(self, steps=1):
    self.done += steps
    now = time.monotonic()
    if self.first_time is None:  # the first step traces the graph: not part of the rate
      self.first_done, self.first_time = self.done, now
      self.last_report = now
    elif now - self.last_report >= self.interval:
      self.report(now)

  def report(self, now=None):
    now = time.monotonic() if now is None else now
    self.last_report = now
    line = f"train step {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
    if self.first_time is not None and self.done > self.first_done:
      rate = (self.done - self.first_done) / (now - self.first_time)
      eta = datetime.timedelta(seconds=round((self.total - self.done) / rate))
      line += f", {rate:.2f} steps/s, ETA {eta}"
    if self.postfix:
      line += "; " + ", ".join(f"{k} {v}" for k, v in self.postfix.items())
    log.info(line)


# --- MLflow helpers --------------------------------------------------------------------------------

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
    self.pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                     if v is not None and not math.isnan(float(v))
                     and int(step) > self.logged_through.get(k, -1)]

  def flush(self):
    if self.pending:  # MlflowClient.log_batch splits what exceeds MLflow's batch limits
      self.client.log_batch(self.run_id, metrics=self.pending)
      self.pending = []


def logged_steps(client, run_id):
  """{metric key: the last step the run has logged for it}."""
  keys = client.get_run(run_id).data.metrics
  return {key: max(m.step for m in client.get_metric_history(run_id, key))
          for key in keys}


def task_overrides():
  """This job's command-line overrides (in a sweep: this job's, not the whole grid)."""
  from hydra.core.hydra_config import HydraConfig
  return " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""


def describe_data(cfg, plan):
  """-> (MLflow dataset inputs, the run's description, how many evaluation images are training
  images). Named by what they are (``scikit-image photos``, ``kodak_train``), with a digest of
  their bytes, so the dashboard shows when a run evaluates on what it trained on."""
  names = {"skimage": "scikit-image photos"}
  if cfg.dataset.source == "tfds":
    inputs = [tracking.tfds_input(cfg.dataset.tfds_name, cfg.dataset.train_split, "training")]
    train_text, train_paths = f"{cfg.dataset.tfds_name} (tensorflow-datasets)", []
  else:
    train_paths = plan["train"] + plan["val"]
    name = names.get(cfg.dataset.source, cfg.dataset.name)
    inputs = [tracking.image_set_input(name, plan["train"], "training")]
    if plan["val"]:
      inputs.append(tracking.image_set_input(name, plan["val"], "validation"))
    train_text = f"{name} ({len(plan['train'])} images, {len(plan['val'])} validating)"
  eval_name = names.get(cfg.eval.source, cfg.eval.set)
  inputs.append(tracking.image_set_input(eval_name, plan["eval"], "evaluation"))
  trained_on = {str(pathlib.Path(p).resolve()) for p in train_paths}
  overlap = sum(str(pathlib.Path(p).resolve()) in trained_on for p in plan["eval"])
  description = (f"{cfg.entropy.name}, lmbda {cfg.lmbda}, {cfg.trainer.steps} steps. Trains on "
                 f"{train_text}; evaluates with real .cbx bitstreams on {eval_name} "
                 f"({len(plan['eval'])} images).")
  if overlap:
    description += (f" {overlap} of the {len(plan['eval'])} evaluation images are training "
                    f"images: the numbers show that the pipeline works, not how good the model is.")
  return inputs, description, overlap


def log_params(client, run_id, cfg):
  from mlflow.entities import Param
  client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in tracking.flatten(cfg).items()])


# --- the job ----------------------------------------------------------------------------------------

def train_and_evaluate(cfg: DictConfig):
  """The whole job. Returns the evaluation summary (dict)."""
  plan = validate(cfg)
  run_dir = plan["run_dir"]
  complete = run_dir / COMPLETE_FILE
  check_same_model(cfg, run_dir)
  if complete.is_file():
    done = files.read_record(complete, ["run_id", "eval"], remedy=(
        "delete it to evaluate the run again from its last checkpoint"))
    log.info(f"run already complete: MLflow run {done['run_id']} ({run_dir}); nothing to do")
    return objective_value(cfg, done["eval"])
  resolver, worker = cluster_role(cfg)
  if not worker.chief:  # trains with the chief; no MLflow, nothing written to the run directory
    keep_run_log_to_the_chief()
    log.info(f"worker {worker.index} of {worker.count}: training with the chief, which logs to "
             f"MLflow and keeps the checkpoints in {run_dir}")
    return train_logged_run(cfg, plan, run_dir, None, None, resolver, worker)
  try:
    run_dir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ConfigError(f"run_dir {run_dir}: cannot be created ({error.strerror})") from None

  # Tracking first: a store that fails must fail before hours of training.
  client = tracking.open_store(plan["uri"])
  sweep = tracking.sweep_info()
  tags = {"entropy": cfg.entropy.name, "lmbda": str(cfg.lmbda),
          "transform": config_choice("transform", "ms2020" if cfg.transform.num_filters == 192
                                     else "custom"),
          "dataset": cfg.dataset.name, "eval_set": cfg.eval.set, "run_type": "train",
          "run_dir": str(run_dir), **tracking.version_tags()}
  if sweep:
    tags["sweep_id"] = sweep["sweep_id"]
    if sweep.get("parent_run_id"):
      tags["mlflow.parentRunId"] = sweep["parent_run_id"]
  inputs, description, overlap = describe_data(cfg, plan)
  tags.update({"cbexp.command": tracking.command_line(), "cbexp.overrides": task_overrides(),
               "eval_overlaps_train": str(overlap), "mlflow.note.content": description})
  run_id, resumed = tracking.start_or_resume(
      client, cfg.tracking.experiment, run_dir, tracking.system_tags(tags),
      run_name=f"{cfg.entropy.name} lmbda={cfg.lmbda}")
  if not resumed:
    client.log_inputs(run_id, datasets=inputs)
    log_params(client, run_id, cfg)
    files.write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    client.log_artifact(run_id, str(run_dir / "config.yaml"))
  log.info(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {plan['uri']}; "
           f"run dir {run_dir}")

  monitor = None
  if cfg.tracking.get("system_metrics"):  # CPU, memory, GPU as system/* metrics (psutil)
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    monitor = SystemMetricsMonitor(run_id, tracking_uri=plan["uri"], resume_logging=resumed)
    monitor.start()
  try:
    return train_logged_run(cfg, plan, run_dir, client, run_id, resolver, worker)
  except BaseException as error:  # a failed or interrupted run must not stay RUNNING
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    try:
      client.set_terminated(run_id, status)
      if not isinstance(error, (TrainingDiverged, checkpoints.CheckpointError, ValueError,
                                WorkerLost)):
        # (those end in one line)
        log.info(f"MLflow run {run_id} marked {status}; the same command resumes it from its "
                 f"last checkpoint")
    except Exception:  # the store itself may be what failed
      pass
    raise
  finally:
    if monitor is not None:
      monitor.finish()


class Worker(typing.NamedTuple):
  """This process in a multi-worker run: its index among the workers, their count, whether it is
  the chief (the one that tracks, writes the run directory and evaluates)."""
  index: int = 0
  count: int = 1
  chief: bool = True


def cluster_role(cfg):
  """-> (cluster resolver or None, Worker) of this process, from the environment only (the
  TensorFlow runtime starts later, with the strategy)."""
  if cfg.trainer.strategy != "multi_worker":
    return None, Worker()
  from cbexp.training import distributed as training
  try:
    resolver = training.cluster_resolver()
    return resolver, Worker(*training.worker_role(resolver))
  except (RuntimeError, ValueError, KeyError) as error:  # a Slurm variable missing or malformed
    where = "TF_CONFIG" if os.environ.get("TF_CONFIG") else "Slurm environment"
    raise ConfigError(f"trainer.strategy=multi_worker: {where}: "
                      f"{str(error).strip().splitlines()[0]}") from None


def keep_run_log_to_the_chief():
  """A worker other than the chief logs to its stderr only: the run directory's run.log (Hydra's
  file handler, opened before the job started) is the chief's."""
  for handler in list(logging.root.handlers):
    if isinstance(handler, logging.FileHandler):
      logging.root.removeHandler(handler)
      handler.close()


def train_logged_run(cfg, plan, run_dir, client, run_id, resolver=None, worker=Worker()):
  """Training, evaluation and saving of a run whose MLflow run exists (``client`` and ``run_id``
  are None on a worker other than the chief, which trains only). -> the job's value."""
  import tempfile

  from cbexp.training import distributed as training
  trainer = cfg.trainer
  # Before TensorFlow's first op: thread counts cannot change once its runtime has started.
  training.configure_threads(trainer.threads)
  training.seed_everything(trainer.seed, trainer.deterministic)
  strategy = training.make_strategy(trainer.strategy, resolver,
                                    trainer.get("collective_timeout_s"))
  if worker.chief:
    client.set_tag(run_id, "replicas", str(strategy.num_replicas_in_sync))
    client.set_tag(run_id, "workers", str(worker.count))
  if worker.count == 1:
    return train_on_strategy(cfg, plan, run_dir, client, run_id, strategy, worker)
  step = [None]  # the step being trained, for the message
  try:
    with tempfile.TemporaryDirectory(prefix=f"cbexp-worker{worker.index}-") as scratch:
      return train_on_strategy(cfg, plan, run_dir, client, run_id, strategy, worker, step,
                               scratch=pathlib.Path(scratch))
  except training.PEER_ERRORS as error:
    where = f"at step {step[0]}" if step[0] else "before training"
    raise WorkerLost(f"worker {worker.index} stopped {where}: a worker is gone or not answering "
                     f"({training.peer_failure(error)}); run the same command on every worker "
                     f"to resume from the last checkpoint in {run_dir / 'checkpoints'}") \
        from (error if os.environ.get("CBEXP_DEBUG") else None)


def train_on_strategy(cfg, plan, run_dir, client, run_id, strategy, worker, current_step=None,
                      scratch=None):
  """Training under ``strategy``, then (chief) evaluation and saving. ``current_step``: a
  one-element list that follows the step being trained; ``scratch``: where a worker other than
  the chief writes its checkpoints (deleted after each save)."""
  import shutil

  import numpy as np
  import tensorflow as tf
  from tqdm import tqdm


  from cbexp.training import data
  from cbexp.training import schedules
  from cbexp.training import distributed as training
  from cbexp.config import build_model
  complete = run_dir / COMPLETE_FILE
  trainer = cfg.trainer
  current_step = current_step if current_step is not None else [None]
  if trainer.batch_size % strategy.num_replicas_in_sync:
    raise ConfigError(f"trainer.batch_size={trainer.batch_size}: the global batch must split "
                      f"evenly over the {strategy.num_replicas_in_sync} replicas")
  if trainer.steps >= PAPER_SCALE_STEPS and not tf.config.list_physical_devices("GPU"):
    log.warning(f"notice: no GPU found, and this run is {trainer.steps} steps (the paper's "
                f"scale: days on a GPU, far longer on this CPU); experiment=quickstart is the "
                f"laptop-sized run")
  with strategy.scope():
    model = build_model(cfg)
    learning_rate = schedules.learning_rate_schedule(cfg.schedule, trainer.steps)
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    # The checkpoint files, not the manager's state file, say where to resume (cbexp.checkpoints).
    # Every worker resumes from the chief's checkpoints; only the chief tidies their folder.
    restored = checkpoints.restore_latest(checkpoint, run_dir / "checkpoints",
                                          read_only=not worker.chief)
    # Saving is collective under MultiWorkerMirroredStrategy: every worker saves, the others
    # into a temporary folder emptied after each save (TensorFlow's multi-worker guide).
    folder = run_dir / "checkpoints" if worker.chief else scratch / "checkpoints"
    manager = tf.train.CheckpointManager(checkpoint, str(folder),
                                         max_to_keep=trainer.max_checkpoints,
                                         checkpoint_name=checkpoints.PREFIX)
  start = int(optimizer.iterations.numpy())
  if worker.count > 1:
    starts = training.steps_of_all_workers(strategy, start)
    if len(set(starts)) > 1:
      raise checkpoints.CheckpointError(
          f"the workers resume from different steps ({', '.join(map(str, starts))}): "
          f"{run_dir / 'checkpoints'} must be on a filesystem every worker reads (the chief's "
          f"checkpoints are the run's)")
  if start:
    log.info(f"resuming from {restored} at step {start}")
  if start or worker.index:
    # New training noise after a resume (the crops below move on the same way): the weights and
    # the optimizer come from the checkpoint, the noise sequence restarts from seed + step.
    # The other workers each draw noise of their own (the chief's weights were broadcast to
    # them when the variables were created, whatever their seed).
    training.seed_everything(trainer.seed + start if not worker.index else int(
        np.random.SeedSequence([trainer.seed, start, worker.index]).generate_state(1)[0]))

  def train_data(context):
    """This input pipeline's share of every global batch (one pipeline per worker), batched per
    replica: the same crops as one process would train on, whatever the number of workers."""
    part = (context.input_pipeline_id, context.num_input_pipelines)
    if cfg.dataset.source == "tfds":
      crops = data.tfds_random_crops(cfg.dataset.tfds_name, cfg.dataset.train_split,
                                     trainer.patch_size, trainer.batch_size,
                                     cfg.dataset.data_dir, part=part)
    else:  # a resumed run draws new crops rather than repeating the first ones
      crops = data.random_crops(plan["train"], trainer.patch_size, trainer.batch_size,
                                seed=trainer.seed + start, check_sizes=False, part=part)
    per_replica = context.get_per_replica_batch_size(trainer.batch_size)
    if per_replica != trainer.batch_size // part[1]:  # several replicas (GPUs) on this worker
      crops = crops.unbatch().batch(per_replica)
    return crops

  val_batch = None  # validation metrics are the chief's
  if not worker.chief:
    pass
  elif cfg.dataset.source == "tfds":
    val_batch = data.tfds_center_crops(cfg.dataset.tfds_name, cfg.dataset.val_split,
                                       trainer.patch_size, cfg.dataset.val_images,
                                       cfg.dataset.data_dir)
  elif plan["val"]:
    val_batch = data.center_crops(plan["val"], trainer.patch_size)
  batches = iter(strategy.distribute_datasets_from_function(train_data))
  train_step = training.make_distributed_train_step(model, optimizer, strategy)
  # Steps a previous attempt of this run already logged (it may have flushed metrics and died
  # before its checkpoint): not logged again. Workers other than the chief log nothing.
  metrics = MetricLog(client, run_id, logged_through=logged_steps(client, run_id)) \
      if worker.chief else MetricLog(None, None)

  def validate_now(step):
    if val_batch is None:
      return
    values = training.evaluate_batch(model, val_batch)
    values["psnr"] = training.psnr_from_mse(values["mse"])
    metrics.add({f"val/{k}": v for k, v in values.items()}, step)

  totals, count = {"loss": 0.0, "bpp": 0.0, "mse": 0.0}, 0
  progress = tqdm(total=trainer.steps, initial=start, desc="train", unit="step",
                  dynamic_ncols=True, mininterval=1.0) if sys.stderr.isatty() else \
      ProgressLog(trainer.steps, start)
  with progress:
    for step in range(start, trainer.steps):
      current_step[0] = step + 1
      values = train_step(batches)
      if not math.isfinite(float(values["loss"])):
        raise TrainingDiverged(
            f"non-finite training loss at step {step + 1}: training stopped; the last checkpoint "
            f"({manager.latest_checkpoint or 'none yet'}) holds finite weights (a lower learning "
            f"rate, e.g. schedule.scale=0.1, may help)")
      for key in totals:
        totals[key] += float(values[key])
      count += 1
      done = step + 1  # completed steps: the MLflow step of what this step produced
      if done % trainer.log_every == 0 or done == trainer.steps:
        mean = {k: v / count for k, v in totals.items()}
        mean["psnr"] = training.psnr_from_mse(mean["mse"])
        mean["lr"] = float(learning_rate(step))
        metrics.add({f"train/{k}": v for k, v in mean.items()}, done)
        progress.set_postfix(loss=f"{mean['loss']:.3f}", bpp=f"{mean['bpp']:.3f}",
                             psnr=f"{mean['psnr']:.2f}", lr=f"{mean['lr']:.0e}",
                             refresh=False)
        totals, count = dict.fromkeys(totals, 0.0), 0
      if done % trainer.val_every == 0 or done == trainer.steps:
        validate_now(done)
      if done % trainer.checkpoint_every == 0 or done == trainer.steps:
        metrics.flush()  # before the checkpoint: a crash in between repeats steps, loses none
        if not training.all_finite(model.trainable_variables):  # never save non-finite weights
          raise TrainingDiverged(f"non-finite weights after step {done}: not checkpointed; the "
                                 f"last checkpoint ({manager.latest_checkpoint or 'none yet'}) "
                                 f"is kept")
        checkpoints.save(manager, done)
        if not worker.chief:
          shutil.rmtree(folder, ignore_errors=True)  # the manager writes it again next time
      progress.update(1)
  if not worker.chief:
    log.info(f"worker {worker.index}: training done; the chief evaluates and saves the model")
    return None
  metrics.flush()

  summary = evaluate_and_save(model, cfg, plan["eval"], run_dir, client, run_id, metrics)
  files.write_atomic(complete, json.dumps({"run_id": run_id, "eval": summary}))
  log.info(f"done: eval bpp {summary['bpp']:.4f}, PSNR {summary['psnr']:.2f} dB, MS-SSIM "
           f"{summary['ms_ssim']:.4f} on {summary['num_images']} images; MLflow run {run_id}")
  return objective_value(cfg, summary)


def evaluate_and_save(model, cfg, eval_paths, run_dir, client, run_id, metrics):
  """Final evaluation with real range coding, the model directory and the model's size and
  complexity, all logged to the run. Returns the evaluation summary (plus ``rd_loss``)."""
  from tqdm import tqdm

  from cbexp.evaluation import evaluate
  from cbexp.codec import savedmodel as export
  from cbexp.codec import model_dir as model_io
  from cbexp.codec.codec import Codec
  model.build_coders()
  # The very functions an export stores, through real .cbx bytes: the numbers of
  # `python -m cbexp.codec eval` on the saved model directory (one evaluation path).
  codec = Codec(export.codec_module(model, cfg), f"run {run_id}")
  progress = tqdm(total=len(eval_paths), desc="evaluate", unit="image",
                  disable=not sys.stderr.isatty())
  per_image, summary = evaluate.evaluate(codec, eval_paths, warmup=cfg.eval.warmup,
                                         progress=lambda row: progress.update(1),
                                         estimate_bits=model.estimate_bits)
  progress.close()
  eval_dir = run_dir / "eval"
  eval_dir.mkdir(exist_ok=True)
  per_image.to_csv(eval_dir / "per_image.csv", index=False)
  model_metrics = {"model/trainable_parameters":
                   sum(int(v.shape.num_elements()) for v in model.trainable_variables)}
  try:
    from cbexp.evaluation import complexity
    model_metrics["model/decode_kmac_per_pixel"] = \
        complexity.decode_kmac_per_pixel(model)["total"]
  except Exception as error:  # another module's code: report, do not lose the run
    log.warning(f"warning: decode complexity not logged ({error})")
  metrics.add({f"eval/{k}": v for k, v in summary.items()}, cfg.trainer.steps)
  metrics.add(model_metrics, cfg.trainer.steps)
  metrics.flush()
  client.log_artifact(run_id, str(eval_dir / "per_image.csv"), "eval")

  # The model as an MLflow model (runs:/<id>/model): the model directory (data) and the export
  # (the SavedModel that pyfunc's predict runs), with signature and an input example.
  import shutil

  from cbexp import images

  from cbexp.tracking import pyfunc as mlflow_model
  model_dir = model_io.save_model_dir(model, cfg, run_dir / "model")
  shutil.rmtree(run_dir / "export", ignore_errors=True)  # an earlier attempt's, if any
  export.save(model, cfg, run_dir / "export", module=codec.module)
  example = images.load_image(eval_paths[0])[:64, :64]
  model_uri = mlflow_model.log_model(tracking.resolve_uri(cfg.tracking.uri), run_id, model_dir,
                                     run_dir / "export", example)
  client.set_tag(run_id, "model_uri", model_uri)
  if cfg.tracking.get("register_as"):
    version = mlflow_model.register(tracking.resolve_uri(cfg.tracking.uri), model_uri,
                                    cfg.tracking.register_as)
    client.set_tag(run_id, "registered_model",
                   f"models:/{cfg.tracking.register_as}/{version}")
    log.info(f"registered as models:/{cfg.tracking.register_as}/{version}")
  try:
    from cbexp.evaluation import size as model_summary
    (run_dir / "summary.txt").write_text(model_summary.summarize(model, cfg) + "\n")
    client.log_artifact(run_id, str(run_dir / "summary.txt"))
  except Exception as error:
    log.warning(f"warning: summary.txt not logged ({error})")
  client.set_terminated(run_id, "FINISHED")
  mse = (255.0 ** 2 / 10 ** (per_image["psnr"] / 10)).mean()
  summary["rd_loss"] = summary["bpp"] + cfg.lmbda * float(mse)
  return summary


def objective_value(cfg, summary):
  """The job's return value: a float for sweepers (eval.objective), else the summary."""
  objective = cfg.eval.get("objective")
  return float(summary[objective]) if objective else summary


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig):
  from cbexp.training.run import run_job  # by module name, also when this file runs as __main__
  return run_job(cfg)


def run_job(cfg):
  """Bad input -> one line on stderr, exit status 2 (CBEXP_DEBUG=1 shows the traceback)."""
  from omegaconf.errors import MissingMandatoryValue

  from cbexp.images import DataError
  from cbexp.training.schedules import ScheduleError
  try:
    return train_and_evaluate(cfg)
  except (ConfigError, DataError, ScheduleError, tracking.TrackingError, files.RecordError,
          MissingMandatoryValue, TrainingDiverged, checkpoints.CheckpointError,
          WorkerLost) as error:
    if os.environ.get("CBEXP_DEBUG"):
      raise
    line = str(error).strip().splitlines()[0]
    log.error(f"error: {line}")
    if tracking.sweep_info_or_none() is not None:
      raise JobFailed(line) from None  # the sweep's other jobs go on; its summary counts this
    sys.exit(2)


class JobFailed(RuntimeError):
  """A sweep job stopped by bad input (its one-line error is already printed)."""


def main():
  from cbexp.cli.common import quiet_unless_debug
  quiet_unless_debug()  # before TensorFlow's import: its start-up lines are not the user's news
  problem = check_group_overrides(sys.argv[1:])
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)
  try:
    hydra_main()
  finally:
    tracking.print_sweep_summary()  # after a multirun (no-op otherwise), failed jobs included


if __name__ == "__main__":
  main()
