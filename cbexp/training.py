"""The training step and a plain training loop. ``cbexp.run`` wraps this with schedules,
checkpoints, distribution strategies and tracking."""
import tensorflow as tf


def make_train_step(model, optimizer):
  """One optimizer step on a float batch (0..255). Returns the loss terms as a dict."""

  @tf.function(reduce_retracing=True)
  def train_step(x):
    with tf.GradientTape() as tape:
      out = model(x, training=True)
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(out.loss, variables), variables))
    return {"loss": out.loss, "bpp": out.bpp, "mse": out.mse}

  return train_step


def fit(model, dataset, steps, learning_rate=1e-4, on_step=None):
  """Trains for ``steps`` steps, then builds the range-coding tables. Returns the loss history."""
  optimizer = tf.keras.optimizers.Adam(learning_rate)
  train_step = make_train_step(model, optimizer)
  history = []
  for step, batch in enumerate(dataset.take(steps)):
    metrics = {k: float(v) for k, v in train_step(batch).items()}
    history.append(metrics)
    if on_step:
      on_step(step, metrics)
  model.build_coders()
  return history


# --- repeatability (cbexp.run) ------------------------------------------------------------------

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


# --- distributed training (cbexp.run) ------------------------------------------------------------

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name):
  """tf.distribute strategy by config name. ``mirrored`` uses every GPU, or every logical CPU
  device when there is no GPU (tests split the CPU in two); ``multi_worker`` reads TF_CONFIG."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"trainer.strategy: unknown strategy {name!r} ({', '.join(STRATEGIES)})")


def make_distributed_train_step(model, optimizer, strategy):
  """One optimizer step on a *global* batch under ``strategy``. Each replica's loss is divided
  by the number of replicas, so the summed gradients are those of the global mean loss.
  Returns the loss terms averaged over replicas (a dict of scalars)."""
  replicas = strategy.num_replicas_in_sync

  def replica_step(x):
    with tf.GradientTape() as tape:
      out = model(x, training=True)
      scaled_loss = out.loss / replicas
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
    return {"loss": out.loss, "bpp": out.bpp, "mse": out.mse}

  @tf.function(reduce_retracing=True)
  def train_step(batch):
    per_replica = strategy.run(replica_step, args=(batch,))
    return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
            for k, v in per_replica.items()}

  return train_step


def all_finite(variables):
  """True when every value of every variable is finite (checked before each checkpoint)."""
  return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))


def evaluate_batch(model, x):
  """Loss terms of the forward pass with ``training=False`` (validation)."""
  out = model(x, training=False)
  return {"loss": float(out.loss), "bpp": float(out.bpp), "mse": float(out.mse)}


def psnr_from_mse(mse):
  import math
  return 10.0 * math.log10(255.0 ** 2 / mse) if mse > 0 else math.inf
