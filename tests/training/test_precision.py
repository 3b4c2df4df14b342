"""trainer.precision: the transforms compute in the mixed-precision policy, the entropy model
(every network that decides a mean, a scale or a symbol) in float32; the weights are float32
under every policy, the model that codes is built in float32, and a short run follows float32's
loss curve within the seed-to-seed spread. A whole run in mixed_bfloat16, its model files and its
export: tests/experiments/test_gpu_benchmark.py (its rd_cost part)."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

from cbexp.codec import savedmodel
from cbexp.codec.codec import Codec
from cbexp.config import build_model, compose
from cbexp.load import load_codec
from cbexp.models.precision import LOSS_SCALE_START, optimizer_for
from cbexp.training import distributed
from cbexp.training.loop import float32_model

COMPUTE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
STEPS = 20


def compute_dtypes(layer, kind=tf.keras.layers.Layer):
  """The compute dtypes of ``layer`` and of every layer of class ``kind`` inside it (Keras's
  input placeholders aside: they compute nothing)."""
  return {
    sub.dtype_policy.compute_dtype
    for sub in layer._flatten_layers()
    if isinstance(sub, kind) and not isinstance(sub, tf.keras.layers.InputLayer)
  }


def train(precision, seed):
  """A tiny checkerboard model trained STEPS steps in ``precision`` from weights of ``seed``, on
  the same crops whatever the seed -> (its loss curve, the model, its config, the steps skipped
  by loss scaling); checks the policies on the way."""
  cfg = compose(["entropy=checkerboard", "transform=tiny", f"trainer.precision={precision}"])
  tf.keras.utils.set_random_seed(seed)
  model = build_model(cfg, precision)
  for transform in (model.analysis, model.synthesis, model.hyper_analysis):
    assert compute_dtypes(transform, tfc.SignalConv2D) == {COMPUTE[precision]}, transform.name
    assert compute_dtypes(transform, tfc.GDN) <= {"float32"}  # GDN: float32 (layers.gdn)
  assert compute_dtypes(model.entropy_model) == {"float32"}
  optimizer = optimizer_for(tf.keras.optimizers.Adam(1e-3), precision)
  strategy = tf.distribute.get_strategy()
  step = distributed.make_distributed_train_step(model, optimizer, strategy)
  crops = tf.data.Dataset.range(STEPS).map(
    lambda i: tf.random.stateless_uniform([2, 64, 64, 3], [7, i], 0, 255)
  )
  batches = iter(strategy.experimental_distribute_dataset(crops))
  curve = np.array([float(step(batches)["loss"]) for _ in range(STEPS)])
  assert np.isfinite(curve).all(), curve
  assert {v.dtype for v in model.variables} == {tf.float32}
  out = model(tf.zeros([1, 64, 64, 3]), training=False)
  assert out.bpp.dtype == out.mse.dtype == tf.float32
  skipped = 0
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    # Each step whose float16 gradients overflow is skipped and halves the scale (which grows
    # only after 2000 good steps).
    skipped = round(math.log2(LOSS_SCALE_START / float(optimizer.loss_scale)))
  return curve, model, cfg, skipped


def test_mixed_precision_follows_the_float32_loss_curve_within_the_seed_spread(
  tmp_path, kodak_image
):
  reference, _, _, _ = train("float32", 0)
  other_seed, _, _, _ = train("float32", 1)
  spread = np.mean(np.abs(other_seed - reference))
  for precision in ("mixed_bfloat16", "mixed_float16"):
    curve, model, cfg, skipped = train(precision, 0)
    assert skipped <= 1, skipped
    # The curve of the steps that updated the weights, against float32's same updates.
    updated = curve[skipped:]
    difference = np.mean(np.abs(updated - reference[: len(updated)]))
    assert difference < spread, (precision, skipped, curve, reference, spread)

    coding = float32_model(model, cfg)  # what evaluation, the model files and the export take
    assert coding is not model
    for transform in (coding.analysis, coding.synthesis, coding.hyper_analysis):
      assert compute_dtypes(transform) == {"float32"}
    key = lambda v: (v.name, tuple(v.shape))  # the policy changes the order of ``variables``
    for a, b in zip(sorted(model.variables, key=key), sorted(coding.variables, key=key)):
      assert key(a) == key(b)
      np.testing.assert_array_equal(a.numpy(), b.numpy())

    # It exports, and the export decodes a Kodak crop exactly as the encoder reconstructed it.
    coding.build_coders()
    encoder = Codec.from_model(coding, cfg)
    savedmodel.save(coding, cfg, tmp_path / precision, module=encoder.module)
    image = np.asarray(kodak_image)[:64, :128]
    decoded = load_codec(str(tmp_path / precision)).decode(encoder.encode(image))
    np.testing.assert_array_equal(decoded, encoder.encoder_reconstruction(image))
