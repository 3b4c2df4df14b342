"""TensorFlow's side of training: threads and seeds (repeatability), the tf.distribute strategies
and the cluster of a multi-worker run (TF_CONFIG or Slurm), the distributed train step and the
checks around it (finite weights, lost peers, the step every worker resumes from).
"""

import os
import re
import typing

import tensorflow as tf

from cbexp.config import STRATEGIES

# --- repeatability --------------------------------------------------------------------------------


def configure_threads(threads):
  """Intra- and inter-op thread counts (None: TensorFlow's default, every core). Float sums,
  hence trained weights, depend on the thread count; must run before TensorFlow's first op."""
  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(int(threads))


def seed_everything(seed, op_determinism=False):
  """Seeds Python, NumPy and TensorFlow's global generator (``tf.keras.utils.set_random_seed``:
  ``tf.random.set_seed`` alone does not make Keras initialisers repeatable across processes).
  Weight initialisation and tfc's training noise draw from these; the crop sampler takes its own
  seed. ``op_determinism`` also makes TensorFlow choose deterministic kernels (slower; needed
  on GPUs, whose reductions are otherwise unordered)."""
  tf.keras.utils.set_random_seed(int(seed))
  if op_determinism:
    tf.config.experimental.enable_op_determinism()


# --- distributed training -------------------------------------------------------------------------

# Under Slurm, worker i of a job listens on port SLURM_PORT_BASE + (job id % 10000) + its index on
# its node: every task computes the same ports from the job id, and two jobs sharing a node
# rarely collide (SlurmClusterResolver's own default, 8888 for every job, always would).
SLURM_PORT_BASE = 20000


def cluster_resolver():
  """The cluster of ``trainer.strategy=multi_worker``, from TensorFlow's own resolvers:
  ``TF_CONFIG`` when it is set (TFConfigClusterResolver), else Slurm's environment when the
  process is a Slurm task (SlurmClusterResolver: SLURM_PROCID, SLURM_STEP_NUM_TASKS,
  SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE; host lists are expanded in Python, no
  ``scontrol``), else one local worker. Reads the environment only: no TensorFlow runtime
  starts, so the role of this process is known before the strategy exists."""
  if os.environ.get("TF_CONFIG") or not (
    os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_PROCID")
  ):
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()
  # TensorFlow's own parser of Slurm's tasks-per-node syntax ("2(x3),1").
  from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver as slurm

  tasks_per_node = max(
    slurm.expand_tasks_per_node(
      os.environ.get("SLURM_STEP_TASKS_PER_NODE", os.environ.get("SLURM_TASKS_PER_NODE", "1"))
    )
  )
  # Slurm binds each task's GPUs itself (the launcher's gpus_per_task): the resolver must not
  # reassign CUDA_VISIBLE_DEVICES (auto_set_gpu) nor run nvidia-smi to count them. Its GPU
  # bookkeeping only limits how many tasks fit on a node, hence one "GPU" per task there; the
  # strategy gets the GPUs this task really sees (listing them starts no runtime).
  resolved = tf.distribute.cluster_resolver.SlurmClusterResolver(
    port_base=SLURM_PORT_BASE + int(os.environ["SLURM_JOB_ID"]) % 10000,
    gpus_per_node=tasks_per_node,
    gpus_per_task=1,
    auto_set_gpu=False,
  )
  spec = resolved.cluster_spec()  # also sets task_type and task_id
  gpus = len(tf.config.list_physical_devices("GPU"))
  return tf.distribute.cluster_resolver.SimpleClusterResolver(
    spec,
    task_type=resolved.task_type,
    task_id=resolved.task_id,
    num_accelerators={"GPU": gpus} if gpus else {},
    rpc_layer="grpc",
  )


class Worker(typing.NamedTuple):
  """This process in a multi-worker run: its index among the workers, their count, whether it is
  the chief (the one that tracks, writes the run directory and evaluates)."""

  index: int = 0
  count: int = 1
  chief: bool = True


def worker_role(resolver):
  """-> (index of this worker in the cluster, number of workers, is it the chief): a Worker's
  fields. The chief is the ``chief`` task if the cluster has one, else worker 0 (TensorFlow's
  rule)."""
  spec = resolver.cluster_spec().as_dict()
  jobs = [job for job in ("chief", "worker") if job in spec]
  if not jobs:  # no cluster: one local worker
    return 0, 1, True
  tasks = [(job, i) for job in jobs for i in range(len(spec[job]))]
  task = (resolver.task_type, int(resolver.task_id or 0))
  if task not in tasks:
    raise ValueError(
      f"this task ({task[0]} {task[1]}) is not a chief or worker of the cluster {spec}"
    )
  return tasks.index(task), len(tasks), tasks.index(task) == 0


def make_strategy(name, resolver=None, collective_timeout_s=None):
  """tf.distribute strategy by config name. ``mirrored`` uses every GPU, or every logical CPU
  device when there is no GPU (tests split the CPU in two); ``multi_worker`` runs on the cluster
  of ``resolver`` (``cluster_resolver()``), one worker per process, every GPU a worker sees.

  A dead worker stops the others through TensorFlow's coordination service, which
  MultiWorkerMirroredStrategy starts: its heartbeat (10 s in TF 2.14) aborts the collectives of
  the others with UnavailableError. ``collective_timeout_s`` (CommunicationOptions) also bounds
  every collective, for a worker that hangs without dying; TensorFlow keeps a thread per pending
  collective for that long, so it is off (None) unless asked for."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == "multi_worker":
    options = tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=float(collective_timeout_s) if collective_timeout_s else None
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
      cluster_resolver=resolver or cluster_resolver(), communication_options=options
    )
  raise ValueError(f"trainer.strategy: unknown strategy {name!r} ({', '.join(STRATEGIES)})")


# What a collective raises on a worker whose peer died (coordination service heartbeat, a reset
# connection) or timed out (collective_timeout_s).
PEER_ERRORS = (
  tf.errors.UnavailableError,
  tf.errors.DeadlineExceededError,
  tf.errors.AbortedError,
  tf.errors.CancelledError,
)


def peer_failure(error):
  """One line from TensorFlow's message about a lost peer, e.g. "Task /job:worker/replica:0/
  task:1 heartbeat timeout" or "Connection reset by peer"."""
  text = getattr(error, "message", None) or str(error)
  match = re.search(r"aborted by: (?:Error reported from \S+: )?([^\n]+)", text)
  line = match.group(1) if match else next((x for x in text.splitlines() if x.strip()), "")
  line = re.split(r"\. This indicates|\s*\[type\.googleapis|\s*Additional GRPC", line)[0]
  return f"{error.__class__.__name__}: {line.strip()[:200]}"


def steps_of_all_workers(strategy, step):
  """-> ``step`` as every replica of the cluster sees it (one all-gather): workers that resumed
  from different checkpoints must not train together."""
  value = strategy.experimental_distribute_values_from_function(
    lambda context: tf.constant([step], tf.int64)
  )
  return [int(v) for v in strategy.gather(value, axis=0).numpy()]


def make_distributed_train_step(model, optimizer, strategy):
  """One optimizer step on the next *global* batch of ``batches`` (an iterator over a
  distributed dataset) under ``strategy``. Each replica's loss is divided by the number of
  replicas, so the summed gradients are those of the global mean loss. Returns the loss terms
  averaged over replicas (a dict of scalars). The batch is taken inside the tf.function: with
  several workers, taking it also agrees across workers that every one has data, and that
  collective belongs in the step's graph rather than in an eager call of its own."""
  replicas = strategy.num_replicas_in_sync
  # mixed_float16: the loss scaled up before the gradients, which are scaled back down
  # (cbexp.models.precision.optimizer_for); the optimizer skips a step whose gradients overflow.
  loss_scaling = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)

  def replica_step(x):
    with tf.GradientTape() as tape:
      out = model(x, training=True)
      replica_loss = out.loss / replicas
      if loss_scaling:
        replica_loss = optimizer.get_scaled_loss(replica_loss)
    variables = model.trainable_variables
    gradients = tape.gradient(replica_loss, variables)
    if loss_scaling:
      gradients = optimizer.get_unscaled_gradients(gradients)
    optimizer.apply_gradients(zip(gradients, variables))
    return {"loss": out.loss, "bpp": out.bpp, "mse": out.mse}

  @tf.function(reduce_retracing=True)
  def train_step(batches):
    per_replica = strategy.run(replica_step, args=(next(batches),))
    return {
      k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()
    }

  return train_step


def all_finite(variables):
  """True when every value of every variable is finite (checked before each checkpoint)."""
  return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))


def evaluate_batch(model, x):
  """Loss terms of the forward pass with ``training=False`` (validation)."""
  out = model(x, training=False)
  return {"loss": float(out.loss), "bpp": float(out.bpp), "mse": float(out.mse)}
