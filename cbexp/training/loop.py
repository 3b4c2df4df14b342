"""The training loop under a tf.distribute strategy: the model, optimizer and checkpoints built
in its scope and restored from the run's last checkpoint (``build_state``, ``resume``), the
input pipeline of each worker, then the steps with logging, validation, checkpointing and the
divergence checks (``train_steps``). ``train_loop`` runs them in that order.
"""

import dataclasses
import math
import pathlib
import shutil
import typing

import numpy as np
import tensorflow as tf

from cbexp.config import ConfigError, build_model
from cbexp.errors import CbexpError
from cbexp.evaluation.metrics import psnr_from_mse
from cbexp.models.precision import copy_weights, optimizer_for
from cbexp.training import checkpoints, data, distributed, schedules
from cbexp.training.progress import log, progress_bar
from cbexp.training.rd_points import RDProbe, TrainingCompute

# From this many training steps on, a run without a GPU gets a notice that it will take long.
PAPER_SCALE_STEPS = 100_000


class TrainingDiverged(CbexpError, RuntimeError):
  """A non-finite loss or weights: the run stops and keeps its last (finite) checkpoint."""


@dataclasses.dataclass
class TrainingState:
  """What the steps update, built under the strategy: ``folder`` is where this worker's
  checkpoint manager writes, ``restored`` the checkpoint resumed (None: a new run), ``start``
  the number of steps already trained."""

  model: tf.keras.Model
  optimizer: tf.keras.optimizers.Optimizer
  learning_rate: typing.Callable
  manager: tf.train.CheckpointManager
  folder: pathlib.Path
  restored: typing.Optional[str]
  start: int


def train_loop(cfg, plan, strategy, worker, metrics, current_step, scratch=None):
  """Trains from the run's last checkpoint to ``trainer.steps`` under ``strategy`` -> the model.
  ``metrics``: the run's MetricLog; ``current_step``: a one-element list that follows the step
  being trained; ``scratch``: where a worker other than the chief writes its checkpoints."""
  check_replicas(cfg.trainer, strategy)
  state = build_state(cfg, plan.run_dir, strategy, worker, scratch)
  resume(state, cfg.trainer.seed, plan.run_dir, strategy, worker)
  chief = worker.chief  # the chief's metrics: validation and RD points
  val_batch = validation_batch(cfg, plan) if chief else None
  rd_probe = RDProbe(cfg, plan.val_paths) if chief and cfg.trainer.get("rd_every") else None
  batches = input_pipeline(cfg, plan, strategy, state.start)
  train_step = distributed.make_distributed_train_step(state.model, state.optimizer, strategy)
  monitors = Monitors(
    val_batch, rd_probe, TrainingCompute(state.folder, state.start, cfg.trainer.max_checkpoints)
  )
  train_steps(
    cfg.trainer, state, lambda: train_step(batches), monitors, metrics, worker, current_step
  )
  return float32_model(state.model, cfg)


def float32_model(model, cfg):
  """The trained model as the codec and the model files take it: ``model`` itself if it was
  trained in float32, else a float32 copy of its weights (cbexp.models.precision)."""
  if cfg.trainer.get("precision", "float32") == "float32":
    return model
  copy = build_model(cfg)
  copy_weights(model, copy)
  return copy


def check_replicas(trainer, strategy):
  """The global batch must split over the replicas; a paper-scale run without a GPU gets a
  notice."""
  if trainer.batch_size % strategy.num_replicas_in_sync:
    raise ConfigError(
      f"trainer.batch_size={trainer.batch_size}: the global batch must split "
      f"evenly over the {strategy.num_replicas_in_sync} replicas"
    )
  if trainer.steps >= PAPER_SCALE_STEPS and not tf.config.list_physical_devices("GPU"):
    log.warning(
      f"notice: no GPU found, and this run is {trainer.steps} steps (the paper's "
      f"scale: days on a GPU, far longer on this CPU); experiment=quickstart is the "
      f"laptop-sized run"
    )


def build_state(cfg, run_dir, strategy, worker, scratch):
  """Model, optimizer and checkpoint manager under ``strategy``, restored from the newest
  readable checkpoint of the run (the checkpoint files, not the manager's state file, say where
  to resume: cbexp.training.checkpoints). Every worker resumes from the chief's checkpoints;
  only the chief tidies their folder."""
  trainer = cfg.trainer
  precision = trainer.get("precision", "float32")
  with strategy.scope():
    model = build_model(cfg, precision)
    learning_rate = schedules.learning_rate_schedule(cfg.schedule, trainer.steps)
    optimizer = optimizer_for(tf.keras.optimizers.Adam(learning_rate), precision)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    restored = checkpoints.restore_latest(
      checkpoint, run_dir / "checkpoints", read_only=not worker.chief
    )
    # Saving is collective under MultiWorkerMirroredStrategy: every worker saves, the others
    # into a temporary folder emptied after each save (TensorFlow's multi-worker guide).
    folder = run_dir / "checkpoints" if worker.chief else scratch / "checkpoints"
    manager = tf.train.CheckpointManager(
      checkpoint,
      str(folder),
      max_to_keep=trainer.max_checkpoints,
      checkpoint_name=checkpoints.PREFIX,
    )
  return TrainingState(
    model,
    optimizer,
    learning_rate,
    manager,
    folder,
    restored,
    start=int(optimizer.iterations.numpy()),
  )


def resume(state, seed, run_dir, strategy, worker):
  """Every worker must start from the same step; a resumed run (and every worker but the chief)
  draws new training noise."""
  start = state.start
  if worker.count > 1:
    starts = distributed.steps_of_all_workers(strategy, start)
    if len(set(starts)) > 1:
      raise checkpoints.CheckpointError(
        f"the workers resume from different steps ({', '.join(map(str, starts))}): "
        f"{run_dir / 'checkpoints'} must be on a filesystem every worker reads (the chief's "
        f"checkpoints are the run's)"
      )
  if start:
    log.info(f"resuming from {state.restored} at step {start}")
  if start or worker.index:
    # New training noise after a resume (the crops move on the same way): the weights and the
    # optimizer come from the checkpoint, the noise sequence restarts from seed + step. The
    # other workers each draw noise of their own (the chief's weights were broadcast to them
    # when the variables were created, whatever their seed).
    distributed.seed_everything(
      seed + start
      if not worker.index
      else int(np.random.SeedSequence([seed, start, worker.index]).generate_state(1)[0])
    )


def validation_batch(cfg, plan):
  """The fixed validation crops, or None without validation images."""
  dataset, patch_size = cfg.dataset, cfg.trainer.patch_size
  if dataset.source == "tfds":
    return data.tfds_center_crops(
      dataset.tfds_name, dataset.val_split, patch_size, dataset.val_images, dataset.data_dir
    )
  return data.center_crops(plan.val_paths, patch_size) if plan.val_paths else None


def input_pipeline(cfg, plan, strategy, start):
  """-> an iterator over the global batches, one input pipeline per worker."""
  return iter(
    strategy.distribute_datasets_from_function(
      lambda context: worker_crops(cfg, plan, start, context)
    )
  )


def worker_crops(cfg, plan, start, context):
  """This input pipeline's share of every global batch, batched per replica: the same crops as
  one process would train on, whatever the number of workers."""
  trainer, dataset = cfg.trainer, cfg.dataset
  part = (context.input_pipeline_id, context.num_input_pipelines)
  if dataset.source == "tfds":
    crops = data.tfds_random_crops(
      dataset.tfds_name,
      dataset.train_split,
      trainer.patch_size,
      trainer.batch_size,
      dataset.data_dir,
      part=part,
    )
  else:  # a resumed run draws new crops rather than repeating the first ones
    crops = data.random_crops(
      plan.train_paths,
      trainer.patch_size,
      trainer.batch_size,
      seed=trainer.seed + start,
      check_sizes=False,
      part=part,
    )
  per_replica = context.get_per_replica_batch_size(trainer.batch_size)
  if per_replica != trainer.batch_size // part[1]:  # several replicas (GPUs) on this worker
    crops = crops.unbatch().batch(per_replica)
  return crops


@dataclasses.dataclass
class Monitors:
  """What the chief measures besides the losses: the validation crops (or None), the RD probe
  (or None: ``trainer.rd_every`` unset) and the training compute."""

  val_batch: typing.Any
  rd_probe: typing.Optional[RDProbe]
  compute: TrainingCompute


class LossAverage:
  """The mean loss terms since the last training log line."""

  def __init__(self):
    self.totals, self.count = {"loss": 0.0, "bpp": 0.0, "mse": 0.0}, 0

  def add(self, values):
    for key in self.totals:
      self.totals[key] += float(values[key])
    self.count += 1

  def take(self):
    """-> the means, and starts over."""
    mean = {k: v / self.count for k, v in self.totals.items()}
    self.totals, self.count = dict.fromkeys(self.totals, 0.0), 0
    return mean


def train_steps(trainer, state, step, monitors, metrics, worker, current_step):
  """The steps from ``state.start`` to ``trainer.steps``: each ``step()`` trains one global
  batch; every ``log_every`` steps the mean losses and the compute so far, every ``val_every``
  the validation, every ``rd_every`` an RD point, every ``checkpoint_every`` (and at the end) a
  checkpoint."""
  losses, compute = LossAverage(), monitors.compute
  due = lambda done, every: bool(every) and (done % every == 0 or done == trainer.steps)
  with progress_bar(trainer.steps, state.start) as progress:
    for index in range(state.start, trainer.steps):
      current_step[0] = index + 1
      compute.start()
      values = step()
      loss = float(values["loss"])  # waits for the step: its time is the step's
      compute.stop()
      if not math.isfinite(loss):
        raise TrainingDiverged(
          f"non-finite training loss at step {index + 1}: training stopped; the last "
          f"checkpoint ({state.manager.latest_checkpoint or 'none yet'}) holds finite weights "
          f"(a lower learning rate, e.g. schedule.scale=0.1, may help)"
        )
      losses.add(values)
      done = index + 1  # completed steps: the MLflow step of what this step produced
      if due(done, trainer.log_every):
        log_losses(losses.take(), state.learning_rate(index), done, metrics, progress)
      if measure(trainer, state.model, monitors, metrics, done, due) or due(
        done, trainer.log_every
      ):
        metrics.add(compute.metrics(), done)  # once per step, after the RD point it paid for
      if due(done, trainer.checkpoint_every):
        save_checkpoint(state, done, metrics, worker, compute)
      progress.update(1)


def measure(trainer, model, monitors, metrics, done, due):
  """The validation crops' losses and the RD point, when due (the chief's). -> whether an RD
  point was taken."""
  if due(done, trainer.val_every) and monitors.val_batch is not None:
    values = distributed.evaluate_batch(model, monitors.val_batch)
    values["psnr"] = psnr_from_mse(values["mse"])
    metrics.add({f"val/{k}": v for k, v in values.items()}, done)
  if monitors.rd_probe is not None and due(done, trainer.rd_every):
    metrics.add(monitors.rd_probe(model, monitors.compute), done)
    return True
  return False


def log_losses(mean, learning_rate, done, metrics, progress):
  mean["psnr"] = psnr_from_mse(mean["mse"])
  mean["lr"] = float(learning_rate)
  metrics.add({f"train/{k}": v for k, v in mean.items()}, done)
  progress.set_postfix(
    loss=f"{mean['loss']:.3f}",
    bpp=f"{mean['bpp']:.3f}",
    psnr=f"{mean['psnr']:.2f}",
    lr=f"{mean['lr']:.0e}",
    refresh=False,
  )


def save_checkpoint(state, done, metrics, worker, compute):
  """The metrics first, then the checkpoint: a crash in between repeats steps, loses none.
  Non-finite weights are never saved."""
  metrics.flush()
  if not distributed.all_finite(state.model.trainable_variables):
    raise TrainingDiverged(
      f"non-finite weights after step {done}: not checkpointed; the last "
      f"checkpoint ({state.manager.latest_checkpoint or 'none yet'}) is "
      f"kept"
    )
  if worker.chief:  # before the checkpoint: a resume from it finds its step's totals
    compute.save(done)
  checkpoints.save(state.manager, done)
  if not worker.chief:
    shutil.rmtree(state.folder, ignore_errors=True)  # the manager writes it again next time
