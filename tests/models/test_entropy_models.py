"""Every entropy model round-trips exactly through real range coding, the checkerboard partition
and passes are what the paper says, and estimated and actual rates agree after training."""

import numpy as np
import pytest
import tensorflow as tf

from cbexp.entropy import layers
from helpers.models import ENTROPY_MODELS, PAPER_ENTROPY_MODELS, assert_round_trip, tiny_overrides


# --- the checkerboard partition ------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(2, 2), (4, 6), (8, 4)])
def test_partition_covers_every_position_exactly_once(height, width):
  ids = tf.reshape(tf.range(height * width * 3, dtype=tf.float32), [1, height, width, 3])
  anchors, non_anchors = layers.split_checkerboard(ids)
  assert anchors.shape == non_anchors.shape == (1, height // 2, width, 3)
  seen = np.concatenate([anchors.numpy().ravel(), non_anchors.numpy().ravel()])
  assert sorted(seen) == list(range(height * width * 3))  # every position once, none twice
  mask = layers.anchor_mask(height, width)
  grid = ids.numpy()[0]
  assert set(anchors.numpy().ravel()) == set(grid[mask].ravel())
  assert ((np.add.outer(np.arange(height), np.arange(width)) % 2 == 1) == mask).all()
  np.testing.assert_array_equal(layers.merge_checkerboard(anchors, non_anchors), ids)


def test_context_mask_sees_only_anchor_neighbours():
  mask = layers.checkerboard_context_mask(5)
  assert mask.sum() == 12 and mask[2, 2] == 0
  for dy in range(5):
    for dx in range(5):
      assert mask[dy, dx] == (dy + dx) % 2  # relative parity odd <=> other class <=> anchor


def test_context_at_non_anchors_ignores_non_anchor_values():
  conv = layers.MaskedConv2D(
    6, layers.checkerboard_context_mask(5), bias_initializer="random_normal"
  )
  rng = np.random.default_rng(0)
  values = tf.constant(rng.normal(size=[1, 8, 8, 3]), tf.float32)
  anchors, non_anchors = layers.split_checkerboard(values)
  zeros = tf.zeros_like(anchors)
  only_non_anchors = layers.merge_checkerboard(zeros, non_anchors)
  _, context = layers.split_checkerboard(conv(only_non_anchors))
  # Only the bias remains: non-anchors never see each other.
  np.testing.assert_allclose(context, tf.broadcast_to(conv.bias, context.shape), atol=1e-6)
  _, context_a = layers.split_checkerboard(conv(layers.merge_checkerboard(anchors, zeros)))
  _, context_all = layers.split_checkerboard(conv(values))
  np.testing.assert_allclose(context_a, context_all, atol=1e-5)


@pytest.mark.parametrize("height,width", [(2, 2), (4, 6), (8, 8)])
def test_context_at_coded_positions_is_the_masked_convolution(height, width):
  # The coded-positions context (3x3 over the packed anchor grids) computes the same function
  # as the 5x5 masked convolution over the full grid, with the same weights (up to float
  # summation order), at every non-anchor, borders included.
  full = layers.CheckerboardContext(6, positions="full_grid", bias_initializer="random_normal")
  coded = layers.CheckerboardContext(6, positions="coded")
  rng = np.random.default_rng(0)
  anchors, _ = layers.split_checkerboard(
    tf.constant(rng.normal(size=[2, height, width, 3]), tf.float32)
  )
  expected = full(anchors)
  coded(anchors)
  coded.set_weights(full.get_weights())
  got = coded(anchors)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # each of the 12 unmasked taps is used exactly once per non-anchor parity
  for parity in (0, 1):
    taps = layers.non_anchor_taps(parity)
    used = sorted(taps[taps < 25].tolist())
    assert used == sorted(np.flatnonzero(layers.checkerboard_context_mask(5)).tolist())


def test_models_saved_without_context_positions_keep_the_full_grid(model_factory):
  # A model directory written before the option has no key: it must keep computing the
  # context as it did, so that its .cbx files still decode; the configs choose "coded".
  from cbexp.config import compose
  from cbexp.entropy.checkerboard import CheckerboardEntropyModel

  assert compose(["entropy=checkerboard"]).entropy.context_positions == "coded"
  assert compose(["entropy=charm_checkerboard"]).entropy.context_positions == "coded"
  legacy = CheckerboardEntropyModel(8, [8, 8], dict(num_scales=64, scale_min=0.11, scale_max=256.0))
  assert legacy.context_model.positions == "full_grid"


def test_every_entropy_class_lists_its_options_with_their_defaults():
  # What a key missing from a saved config means (cbexp.config.entropy_defaults reads the
  # class's signature): the options declared by the shared constructor's hooks count too.
  from cbexp.config import entropy_classes, entropy_defaults

  common = {"hidden_filters": (224, 128), "numerics": "float"}
  expected = {
    "hyperprior": {"param_widths": (3, 2)},
    "checkerboard": {
      "param_widths": (3, 2),
      "context_multiplier": 2,
      "two_hyper_paths": False,
      "lrp_on_y_hat": False,
      "context_positions": "full_grid",
    },
    "autoregressive": {"param_widths": (3, 2), "context_multiplier": 2, "mean_steps": 16},
    "charm": {"num_slices": 10, "max_support_slices": 5},
    "charm_checkerboard": {
      "slices": (16, 16, 32, 64, 192),
      "max_support_slices": -1,
      "param_widths": (3, 2),
      "context_multiplier": 2,
      "context_positions": "full_grid",
    },
  }
  targets = {target.split(".")[2]: target for target in entropy_classes()}
  assert set(targets) == set(expected)
  for module, options in expected.items():
    assert entropy_defaults(targets[module]) == {**common, **options, "name": module}


def test_checkerboard_decodes_in_exactly_two_passes(model_factory, monkeypatch):
  model = model_factory(tiny_overrides("checkerboard"))
  entropy = model.entropy_model
  x = tf.random.uniform([1, 128, 192, 3], 0, 255, seed=1)
  y = model.analysis(x)
  z_hat = tf.round(model.hyper_analysis(y))
  strings, y_hat = entropy.compress(y, z_hat)
  calls = {"range_decode": [], "context": 0, "entropy_parameters": 0}
  decode, context, params = (
    entropy.gaussian.decompress,
    entropy.context_model.call,
    entropy.entropy_parameters.call,
  )

  def spy_decode(s, index, mean):
    calls["range_decode"].append(int(tf.size(mean)))
    return decode(s, index, mean)

  def spy_context(*a, **k):
    calls["context"] += 1
    return context(*a, **k)

  def spy_params(*a, **k):
    calls["entropy_parameters"] += 1
    return params(*a, **k)

  monkeypatch.setattr(entropy.gaussian, "decompress", spy_decode)
  monkeypatch.setattr(entropy.context_model, "call", spy_context)
  monkeypatch.setattr(entropy.entropy_parameters, "call", spy_params)
  decoded = entropy.decompress(strings, z_hat, tf.shape(y)[1:3])
  half = int(tf.size(y)) // 2
  assert calls == {"range_decode": [half, half], "context": 1, "entropy_parameters": 2}
  np.testing.assert_array_equal(decoded, y_hat)


# --- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("entropy", ENTROPY_MODELS)
@pytest.mark.parametrize("size", [(97, 131), (1, 1), (64, 64), (70, 200)])
def test_round_trip_tiny_odd_sizes(model_factory, entropy, size):
  rng = np.random.default_rng(sum(size))
  image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
  assert_round_trip(model_factory(tiny_overrides(entropy)), image)


@pytest.mark.parametrize("entropy", ENTROPY_MODELS)
def test_round_trip_tiny_kodak(model_factory, kodak_image, entropy):
  assert_round_trip(model_factory(tiny_overrides(entropy)), kodak_image)


@pytest.mark.slow
@pytest.mark.parametrize("entropy", PAPER_ENTROPY_MODELS)
def test_round_trip_paper_configuration_kodak(model_factory, kodak_image, entropy):
  model = model_factory([f"entropy={entropy}"])
  assert model.latent_depth == 320  # the paper configuration is the default
  assert_round_trip(model, kodak_image)


# --- the range coder's own model (diagnostic) ----------------------------------------------
def test_table_bits_is_the_size_of_the_strings_and_bounds_outliers():
  from cbexp.entropy.base import GaussianConditional

  gaussian = GaussianConditional()
  gaussian.build_coder()
  rng = np.random.default_rng(0)
  shape = [3, 16, 16, 8]
  index = tf.constant(rng.uniform(-2, 66, shape), tf.float32)  # also out of the table's range
  loc = tf.constant(rng.normal(0, 3, shape), tf.float32)
  y = (
    loc
    + gaussian._scale_fn(gaussian.coded_indexes(index))
    * tf.constant(rng.normal(size=shape), tf.float32)
  ).numpy()
  y[0, 0, 0, :4] += [40, -40, 3, -1000]  # escape codes, both signs; one absurd outlier
  y[1, 2, 3, 0] += 5
  strings = gaussian.compress(y, index, loc).numpy()
  costs = gaussian.symbol_bits(y, index, loc)
  table = gaussian.table_bits(y, index, loc)
  assert costs["overflow"][0].sum() >= 4 and costs["overflow"][1].sum() >= 1
  for string, bits in zip(strings, table):
    assert abs(8 * len(string) - bits) < 16  # the coder's model, up to its termination bytes
  # The Gaussian information content is what the estimate sums ...
  estimate = gaussian.rate(y, index, loc, training=False).numpy()
  np.testing.assert_allclose(costs["gaussian"].reshape(3, -1).sum(-1), estimate, rtol=1e-5)
  # ... and is unbounded: the -1000 outlier alone costs millions of bits there, a few dozen in
  # the strings (escape symbol + Elias gamma + sign).
  assert estimate[0] > 1e6 and table[0] < 2 * table[2]


def test_compress_before_coders_are_built_says_what_to_do():
  from cbexp.config import build_model, compose

  model = build_model(compose(tiny_overrides("hyperprior")))
  with pytest.raises(RuntimeError, match="build_coders"):
    model.compress(np.zeros((8, 8, 3), np.uint8))


def test_the_hyperpriors_tables_in_a_graph_are_tfcs_eager_tables():
  """build_coders computes the z tables in a tf.function; files and exports made when they were
  built eagerly must keep their fingerprint: the two constructions agree bit for bit (weights
  moved away from their initial values, as training moves them)."""
  import tensorflow_compression as tfc

  from cbexp.load import build_untrained

  model, _ = build_untrained(tiny_overrides("hyperprior"), seed=0)
  for variable in model.hyperprior.trainable_variables:
    variable.assign(variable + tf.random.stateless_normal(variable.shape, [1, 2]) * 0.3)
  model.build_coders()
  eager = tfc.ContinuousBatchedEntropyModel(
    model.hyperprior, coding_rank=3, compression=True, offset_heuristic=False
  )
  for built, reference in [
    (model.z_coder.cdf, eager.cdf),
    (model.z_coder.cdf_offset, eager.cdf_offset),
  ]:
    np.testing.assert_array_equal(built.numpy(), reference.numpy())
  assert not np.array_equal(
    model.z_coder.cdf.numpy()[:1], np.zeros_like(model.z_coder.cdf.numpy()[:1])
  )
