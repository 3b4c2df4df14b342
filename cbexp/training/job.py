"""One training job, from a validated config (cbexp.training.preflight) to ``complete.json``:
``run_job`` starts or resumes the MLflow run, ``train_on_cluster`` sets up threads, seeds and the
strategy (and the workers of a multi-worker run), ``train_and_finalize`` trains
(cbexp.training.loop) and, on the chief, evaluates and saves (cbexp.training.finalize).
"""

import contextlib
import json
import logging
import os
import pathlib
import tempfile

from omegaconf import OmegaConf

from cbexp import files
from cbexp.config import ConfigError
from cbexp.errors import CbexpError
from cbexp.tracking import runs, store, sweeps
from cbexp.training import checkpoints, distributed, finalize, loop
from cbexp.training.progress import log

COMPLETE_FILE = "complete.json"


class WorkerLost(CbexpError, RuntimeError):
  """A multi-worker run whose collectives failed because another worker died, hung or could
  not be reached: this worker stops (one line); the same commands resume the run."""

  # The process exits without TensorFlow's teardown, which waits tens of seconds for the lost
  # peer (the coordination service's shutdown) after everything is said and marked.
  exit_at_once = True


def run_job(cfg, plan):
  """The whole job of ``cfg`` (checked: ``plan``). Returns the evaluation summary, or the value
  of ``eval.objective`` for a sweeper; None on a worker other than the chief."""
  complete = plan.run_dir / COMPLETE_FILE
  if complete.is_file():
    done = files.read_record(
      complete,
      ["run_id", "eval"],
      remedy=("delete it to evaluate the run again from its last checkpoint"),
    )
    log.info(f"run already complete: MLflow run {done['run_id']} ({plan.run_dir}); nothing to do")
    return objective_value(cfg, done["eval"])
  resolver, worker = cluster_role(cfg)
  if not worker.chief:  # trains with the chief; no MLflow, nothing written to the run directory
    keep_run_log_to_the_chief()
    log.info(
      f"worker {worker.index} of {worker.count}: training with the chief, which logs to "
      f"MLflow and keeps the checkpoints in {plan.run_dir}"
    )
    return train_on_cluster(cfg, plan, None, None, resolver, worker)
  try:
    plan.run_dir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ConfigError(f"run_dir {plan.run_dir}: cannot be created ({error.strerror})") from None
  # Tracking first: a store that fails must fail before hours of training.
  client, run_id, resumed = start_tracked_run(cfg, plan)
  with (
    system_metrics(cfg, plan.uri, run_id, resumed),
    marked_on_failure(client, run_id, plan.run_dir),
  ):
    return train_on_cluster(cfg, plan, client, run_id, resolver, worker)


def start_tracked_run(cfg, plan):
  """Opens the store and starts the run's MLflow run, or resumes the one its run directory
  names; a new run gets its dataset inputs, parameters and config. -> (client, run_id, resumed)."""
  client = store.open_store(plan.uri)
  tags = run_tags(cfg, plan.run_dir)
  inputs, description, overlap = runs.describe_data(cfg, plan)
  tags.update(
    {
      "cbexp.command": runs.command_line(),
      "cbexp.overrides": runs.task_overrides(),
      "eval_overlaps_train": str(overlap),
      "mlflow.note.content": description,
    }
  )
  run_id, resumed = runs.start_or_resume(
    client,
    cfg.tracking.experiment,
    plan.run_dir,
    runs.system_tags(tags),
    run_name=f"{cfg.entropy.name} lmbda={cfg.lmbda}",
  )
  if not resumed:
    client.log_inputs(run_id, datasets=inputs)
    runs.log_params(client, run_id, cfg)
    files.write_atomic(plan.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    client.log_artifact(run_id, str(plan.run_dir / "config.yaml"))
  log.info(
    f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {plan.uri}; run dir {plan.run_dir}"
  )
  return client, run_id, resumed


def run_tags(cfg, run_dir):
  """What the run trains and where (the tags the analysis selects by), versions, its sweep."""
  sweep = sweeps.sweep_info()
  transform = runs.config_choice("transform", cfg.transform.get("name", "ms2020"))
  tags = {
    "entropy": cfg.entropy.name,
    "lmbda": str(cfg.lmbda),
    "transform": transform,
    "dataset": cfg.dataset.name,
    "eval_set": cfg.eval.set,
    "run_type": "train",
    "run_dir": str(run_dir),
    **runs.version_tags(),
  }
  if sweep:
    tags["sweep_id"] = sweep["sweep_id"]
    if sweep.get("parent_run_id"):
      tags["mlflow.parentRunId"] = sweep["parent_run_id"]
  return tags


@contextlib.contextmanager
def system_metrics(cfg, uri, run_id, resumed):
  """CPU, memory and GPU as system/* metrics (psutil) while the block runs, if configured."""
  if not cfg.tracking.get("system_metrics"):
    yield
    return
  from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

  monitor = SystemMetricsMonitor(run_id, tracking_uri=uri, resume_logging=resumed)
  monitor.start()
  try:
    yield
  finally:
    monitor.finish()


@contextlib.contextmanager
def marked_on_failure(client, run_id, run_dir):
  """A failed or interrupted run must not stay RUNNING: FAILED (KILLED on Ctrl-C, SIGTERM)."""
  try:
    yield
  except BaseException as error:
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    try:
      client.set_terminated(run_id, status)
      # A user error ends in its own one line; after anything else, say how to go on.
      if not isinstance(error, (CbexpError, ValueError)):
        log.info(f"MLflow run {run_id} marked {status}; the same command {resumes(run_dir)}")
    except Exception:  # the store itself may be what failed
      pass
    raise


def resumes(run_dir):
  """What the same command does next for the run in ``run_dir``, as its checkpoints say."""
  found = checkpoints.checkpoints_on_disk(pathlib.Path(run_dir) / "checkpoints")
  if not found:
    return "starts it again from step 0 (no checkpoint was written)"
  return f"resumes it from its last checkpoint ({found[0][1]})"


def cluster_role(cfg):
  """-> (cluster resolver or None, Worker) of this process, from the environment only (the
  TensorFlow runtime starts later, with the strategy)."""
  if cfg.trainer.strategy != "multi_worker":
    return None, distributed.Worker()
  try:
    resolver = distributed.cluster_resolver()
    return resolver, distributed.Worker(*distributed.worker_role(resolver))
  except (RuntimeError, ValueError, KeyError) as error:  # a Slurm variable missing or malformed
    where = "TF_CONFIG" if os.environ.get("TF_CONFIG") else "Slurm environment"
    raise ConfigError(
      f"trainer.strategy=multi_worker: {where}: {str(error).strip().splitlines()[0]}"
    ) from None


def keep_run_log_to_the_chief():
  """A worker other than the chief logs to its stderr only: the run directory's run.log (Hydra's
  file handler, opened before the job started) is the chief's."""
  for handler in list(logging.root.handlers):
    if isinstance(handler, logging.FileHandler):
      logging.root.removeHandler(handler)
      handler.close()


def train_on_cluster(cfg, plan, client, run_id, resolver=None, worker=distributed.Worker()):
  """Training (and, on the chief, evaluation and saving) of a run whose MLflow run exists
  (``client`` and ``run_id`` are None on a worker other than the chief). -> the job's value."""
  trainer = cfg.trainer
  # Before TensorFlow's first op: thread counts cannot change once its runtime has started.
  distributed.configure_threads(trainer.threads)
  distributed.seed_everything(trainer.seed, trainer.deterministic)
  strategy = distributed.make_strategy(
    trainer.strategy, resolver, trainer.get("collective_timeout_s")
  )
  if worker.chief:
    client.set_tag(run_id, "replicas", str(strategy.num_replicas_in_sync))
    client.set_tag(run_id, "workers", str(worker.count))
  if worker.count == 1:
    return train_and_finalize(cfg, plan, client, run_id, strategy, worker, [None])
  step = [None]  # the step being trained, for the message
  try:
    with tempfile.TemporaryDirectory(prefix=f"cbexp-worker{worker.index}-") as scratch:
      return train_and_finalize(
        cfg, plan, client, run_id, strategy, worker, step, scratch=pathlib.Path(scratch)
      )
  except distributed.PEER_ERRORS as error:
    where = f"at step {step[0]}" if step[0] else "before training"
    message = (
      f"worker {worker.index} stopped {where}: a worker is gone or not answering "
      f"({distributed.peer_failure(error)}); the same command on every worker "
      f"{resumes(plan.run_dir)}"
    )
    raise WorkerLost(message) from (error if os.environ.get("CBEXP_DEBUG") else None)


def train_and_finalize(cfg, plan, client, run_id, strategy, worker, current_step, scratch=None):
  """``loop.train_loop``, then (chief) evaluation, saving and ``complete.json``."""
  # Steps a previous attempt of this run already logged (it may have flushed metrics and died
  # before its checkpoint): not logged again. Workers other than the chief log nothing.
  metrics = (
    runs.MetricLog(client, run_id, logged_through=runs.logged_steps(client, run_id))
    if worker.chief
    else runs.MetricLog(None, None)
  )
  model = loop.train_loop(cfg, plan, strategy, worker, metrics, current_step, scratch)
  if not worker.chief:
    log.info(f"worker {worker.index}: training done; the chief evaluates and saves the model")
    return None
  metrics.flush()
  summary = finalize.evaluate_and_save(
    model, cfg, plan.eval_paths, plan.run_dir, client, run_id, metrics
  )
  files.write_atomic(plan.run_dir / COMPLETE_FILE, json.dumps({"run_id": run_id, "eval": summary}))
  log.info(
    f"done: eval bpp {summary['bpp']:.4f}, PSNR {summary['psnr']:.2f} dB, MS-SSIM "
    f"{summary['ms_ssim']:.4f} on {summary['num_images']} images; MLflow run {run_id}"
  )
  return objective_value(cfg, summary)


def objective_value(cfg, summary):
  """The job's return value: a float for sweepers (eval.objective), else the summary."""
  objective = cfg.eval.get("objective")
  return float(summary[objective]) if objective else summary
