"""A plain training loop for the tests of the models (``cbexp train`` runs its own, distributed
one: cbexp.training.loop)."""

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
