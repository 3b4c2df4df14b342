"""Tiled analysis and synthesis (cbexp/models/tiling.py): the receptive field derived from each
backbone's layer list equals the one measured on the network (the support of an output sample's
gradient), and tiled coding gives the untiled strings, latents and pixels bit for bit, at sizes
that are not multiples of the tile, whichever side is tiled."""

import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from cbexp.load import build_untrained
from cbexp.models import tiling
from cbexp.models.transforms import cheng2020, elic, ms2020
from cbexp.models.transforms.layers import transform_reach

BACKBONES = {
  "ms2020": (ms2020, {}),
  "cheng2020_anchor": (cheng2020, {}),
  "cheng2020_attn": (cheng2020, {"attention": True}),
  "elic": (elic, {}),
}


def support_radius(transform, x, outputs, scale):
  """The farthest input sample (rows) on which output rows ``outputs`` depend, measured from
  each output's position ``j * scale`` in input samples: the gradient of the output row's sum
  is nonzero exactly on its receptive field (random weights and inputs)."""
  x = tf.constant(x)
  farthest = 0.0
  for j in outputs:
    with tf.GradientTape() as tape:
      tape.watch(x)
      value = tf.reduce_sum(transform(x)[0, j, j, :])
    rows = np.nonzero(np.abs(tape.gradient(value, x).numpy()[0]).sum(axis=(1, 2)))[0]
    farthest = max(farthest, j * scale - rows.min(), rows.max() - j * scale)
  return farthest


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_derived_receptive_field_is_the_measured_one(backbone):
  module, options = BACKBONES[backbone]
  tf.random.set_seed(1)
  rng = np.random.default_rng(0)
  analysis = module.AnalysisTransform(16, 40, **options)
  image = rng.uniform(0, 255, (1, 512, 512, 3)).astype(np.float32)
  radius, scale = transform_reach(analysis)
  assert scale == 16
  # Output 16 sits at pixel 256, far from the borders: its support is the whole field.
  assert radius == support_radius(analysis, image, [16], 16)
  assert tiling.halo_latents(analysis) == math.ceil(radius / 16)

  synthesis = module.SynthesisTransform(16, 40, **options)
  latent = rng.normal(size=(1, 32, 32, 40)).astype(np.float32)
  radius, scale = transform_reach(synthesis)
  assert scale == Fraction(1, 16)
  # Each of the 16 output phases of latent 16 reaches its own extent; the field is the widest.
  assert radius == support_radius(synthesis, latent, range(256, 272), 1 / 16)
  assert tiling.halo_latents(synthesis) == math.ceil(radius)


@pytest.mark.parametrize("transform", ["tiny", "cheng2020_attn_tiny", "elic_tiny"])
def test_tiled_coding_is_bit_identical_to_untiled(transform):
  model, _ = build_untrained(
    [f"transform={transform}", "entropy=checkerboard", "entropy.hidden_filters=[16,16]"], seed=0
  )
  # 200x328 pads to 256x384: 16x24 latents, cut by tiles of 3 and 5 into uneven pieces.
  image = np.random.default_rng(0).integers(0, 256, (200, 328, 3), dtype=np.uint8)
  assert model.tiles[0] > 24 and model.tiles[1] > 24  # the default budget: one tile here
  model.set_memory_budget(0)
  untiled = model.compress(image)
  untiled_pixels = model.decompress(untiled).numpy()
  model._tiles = (3, 5)  # what a budget gives at paper width, in proportion to this image
  model._build_coding_graphs()
  tiled = model.compress(image)
  assert tiled.strings == untiled.strings and tiled.checks == untiled.checks
  np.testing.assert_array_equal(tiled.y_hat.numpy(), untiled.y_hat.numpy())
  # Tiled decoding of both files, then untiled decoding of the tiled file: the same pixels.
  np.testing.assert_array_equal(model.decompress(untiled).numpy(), untiled_pixels)
  np.testing.assert_array_equal(model.decompress(tiled).numpy(), untiled_pixels)
  model.set_memory_budget(0)
  np.testing.assert_array_equal(model.decompress(tiled).numpy(), untiled_pixels)


def test_the_tile_follows_the_memory_budget_not_the_image():
  model, _ = build_untrained(["transform=tiny", "entropy=hyperprior"], seed=0)
  model.set_memory_budget(64)
  small = model.tiles
  model.set_memory_budget(1024)
  large = model.tiles
  assert all(0 < s < g for s, g in zip(small, large))
  # 16x the budget, 4x the tile area per side squared: the side grows by about 4.
  assert all(3.5 < g / s < 4.5 for s, g in zip(small, large))
  model.set_memory_budget(0)
  assert model.tiles == (0, 0)
  per_latent = tiling.activation_bytes_per_latent(model.synthesis, model.latent_depth)
  # The synthesis's widest layer: the last one, 16 channels at 64 samples per latent in, 3 at
  # 256 out (tiny width), in float32 bytes.
  assert per_latent == 4 * (16 * 64 + 3 * 256)
