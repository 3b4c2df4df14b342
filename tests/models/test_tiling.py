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
from cbexp.models import streaming, tiling
from cbexp.models.transforms import cheng2020, elic, ms2020
from cbexp.models.transforms.layers import HyperSynthesisTransform, SliceTransform, transform_reach
from helpers.models import tiny_overrides

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

  def tiles_of_3_and_5():  # what a budget gives at paper width, in proportion to this image
    model._tiles = (3, 5)
    model._build_coding_graphs()

  assert_codes_as_untiled(model, image, tiles_of_3_and_5)


def assert_codes_as_untiled(model, image, tile, exact=True):
  """Untiled coding of ``image``, then ``tile()``: the same strings and checks (the same
  symbols); either file decodes tiled, and the tiled file untiled, to the untiled pixels. With
  ``exact``, the latents and pixels bit for bit (tiled transforms); otherwise the latents to
  their last bits and the pixels within one level (``assert_latents_agree``)."""
  model.set_memory_budget(0)
  untiled = model.compress(image)
  untiled_pixels = model.decompress(untiled).numpy()
  tile()
  tiled = model.compress(image)
  assert tiled.strings == untiled.strings and tiled.checks == untiled.checks
  same_pixels = np.testing.assert_array_equal if exact else assert_within_one_level
  if exact:
    np.testing.assert_array_equal(tiled.y_hat.numpy(), untiled.y_hat.numpy())
  else:
    assert_latents_agree(tiled.y_hat, untiled.y_hat)
  same_pixels(model.decompress(untiled).numpy(), untiled_pixels)
  same_pixels(model.decompress(tiled).numpy(), untiled_pixels)
  model.set_memory_budget(0)
  same_pixels(model.decompress(tiled).numpy(), untiled_pixels)


def assert_latents_agree(got, want):
  """y_hat of the entropy model's networks run over row bands against the whole latent: the
  symbols are the same (the callers compare the strings and checks), and each latent, its symbol
  plus the predicted mean, agrees to the last bits of float32. oneDNN chooses its kernels by the
  tensor's shape, and on some CPUs a band's products round differently from the whole tensor's
  (an AMD EPYC without AVX-512: 3e-7; an Intel Xeon with AVX-512: bit for bit)."""
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def assert_within_one_level(got, want):
  """Decoded pixels within one level of each other (issue 25's criterion)."""
  difference = np.abs(np.asarray(got, np.int32) - np.asarray(want, np.int32))
  assert difference.max() <= 1, difference.max()


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


def test_a_streams_tiles_pay_for_what_the_stream_keeps():
  """In a stream, the synthesis's tile (and the analysis's) gets the budget less what the
  stream keeps between calls (every output for the lag and two bands, or every row where that
  is fewer), at least half the budget: on a wide image (the paper ChARM at 24 MP keeps about
  0.2 GB) the tile is smaller than the budget's alone, on a narrow one about the budget's."""
  model, _ = build_untrained(tiny_overrides("charm", "entropy.num_slices=2"), seed=0)
  budget_mb = 8  # tiles of 12 latents (the tiny synthesis: 7 KB a latent, 8x that)
  model.set_memory_budget(budget_mb)
  em, budget = model.entropy_model, budget_mb * 2**20
  per_latent = tiling.activation_bytes_per_latent(model.synthesis, model.latent_depth)
  per_pixel_latent = tiling.activation_bytes_per_latent(model.analysis, 3)

  def tile_at(width):
    z = tf.zeros([1, 16, width // 4, 8])
    plan = em.decoding_stream([tf.constant([b""])] * em.num_strings, z, [64, width])
    pace = tf.maximum(plan.pace, plan.min_rows)
    kept_rows = min(streaming.lag(plan.stages) + 2 * int(pace), 64)
    kept = streaming.kept_bytes_per_row(plan.stages) * kept_rows
    return int(model.stream_tiles(plan)[1]), int(kept), plan

  narrow, kept, _ = tile_at(4)
  assert kept < budget / 2 and narrow == tiling.tile_for_budget(budget - kept, per_latent)
  assert narrow <= model.tiles[1] < narrow + 2
  wide, kept, plan = tile_at(400)
  assert kept > budget / 2 and wide == tiling.tile_for_budget(budget / 2, per_latent)
  assert wide < model.tiles[1]
  # The analysis's tile in an encoding stream (y computed band by band) likewise.
  assert int(model.stream_tiles(plan)[0]) == tiling.tile_for_budget(budget / 2, per_pixel_latent)
  model.set_memory_budget(0)
  assert model.stream_tiles(plan) == (0, 0)  # untiled


# --- the entropy model's networks over row bands -------------------------------------------------


@pytest.mark.parametrize(
  "transform",
  [
    ("hyper_synthesis", lambda: HyperSynthesisTransform([24, 24], 40), 1 / 4),
    ("slice_transform", lambda: SliceTransform([24, 16], 8), 1),
  ],
  ids=lambda t: t[0],
)
def test_the_entropy_models_halos_are_their_measured_receptive_fields(transform):
  _, make, scale = transform
  tf.random.set_seed(1)
  network = make()
  x = np.random.default_rng(0).normal(size=(1, 32, 32, 40)).astype(np.float32)
  radius, derived_scale = transform_reach(network)
  assert derived_scale == Fraction(scale).limit_denominator()
  # Output samples far from the borders (every phase of the upsampling): the whole field.
  outputs = range(64, 64 + int(1 / scale)) if scale < 1 else [16]
  assert radius == support_radius(network, x, outputs, scale)
  assert tiling.halo_latents(network) == math.ceil(radius)


def test_row_bands_equal_the_whole_tensor_and_no_band_is_short():
  tf.random.set_seed(2)
  net = SliceTransform([16, 8], 4)
  halo = math.ceil(transform_reach(net)[0])
  x = tf.constant(np.random.default_rng(1).normal(size=(1, 23, 7, 5)).astype(np.float32))
  h = tf.constant(np.random.default_rng(2).normal(size=(1, 23, 7, 3)).astype(np.float32))
  seen = []

  def fn(a, b):
    seen.append(int(a.shape[1]))
    joined = tf.concat([a, b], -1)
    return net(joined), joined[..., :1] * 2

  whole = fn(x, h)
  seen.clear()
  # 20 positions per band at width 7: bands of 2 rows, the last one 3 (23 = 10 * 2 + 3).
  banded = tiling.row_bands(fn, [x, h], 20, halo, (4, 1))
  # Each band read with its halo where the tensor has rows: the last one is 3 rows + the halo.
  assert seen == [2 + min(r, halo) + min(21 - r, halo) for r in range(0, 20, 2)] + [3 + halo]
  for got, want in zip(banded, whole):
    assert_latents_agree(got, want)  # bit for bit on some CPUs, not all
  # A halo short of the receptive field is caught: the band borders differ, by far more.
  short = tiling.row_bands(fn, [x, h], 20, halo - 1, (4, 1))
  assert not np.allclose(short[0].numpy(), whole[0].numpy(), rtol=1e-3, atol=1e-3)


def test_the_band_follows_the_budget_and_never_drops_below_the_minimum():
  model, _ = build_untrained(tiny_overrides("checkerboard"), seed=0)
  entropy = model.entropy_model
  widest = entropy.widest_layer_values()
  assert widest == max(
    k.shape[-2] + k.shape[-1] for k in entropy.weights if "kernel" in k.name and k.shape.rank > 1
  )
  model.set_memory_budget(4096)
  large = entropy.band_positions
  assert large == int(4096 * 2**20 / (4 * 4 * widest))
  model.set_memory_budget(1)
  assert entropy.band_positions == tiling.MIN_BAND_POSITIONS
  model.set_memory_budget(0)
  assert entropy.band_positions == 0
  entropy.numerics = "exact"  # as entropy.numerics=exact builds it
  entropy.set_memory_budget(4096 * 2**20)
  assert entropy.band_positions == 0  # exact numerics keep the whole latent


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole_latent_bands"])
@pytest.mark.parametrize(
  "entropy", [["checkerboard"], ["charm", "entropy.num_slices=2", "entropy.max_support_slices=1"]]
)
def test_banded_entropy_networks_code_the_same_strings(entropy, streamed, monkeypatch):
  """Streamed (cbexp.models.streaming: coded band by band) or not (the networks over row bands,
  the range coder on the whole latent, as under a CodingRecorder): the untiled strings."""
  model, _ = build_untrained(tiny_overrides(*entropy), seed=0)
  # 200x328 pads to 256x384: a 16x24 latent (8x24 packed), cut into bands of 1 to 3 rows.
  image = np.random.default_rng(3).integers(0, 256, (200, 328, 3), dtype=np.uint8)
  monkeypatch.setattr(tiling, "MIN_BAND_POSITIONS", 1)
  if not streamed:
    monkeypatch.setattr(type(model.entropy_model), "stream_unit", 0)

  def bands_of_a_few_dozen_positions():
    model.set_memory_budget(0.02)
    assert 0 < model.entropy_model.band_positions < 24 * 2
    assert model.entropy_model.streams() == streamed

  assert_codes_as_untiled(model, image, bands_of_a_few_dozen_positions, exact=False)


@pytest.mark.parametrize(
  "entropy", [["checkerboard"], ["charm", "entropy.num_slices=2", "entropy.max_support_slices=1"]]
)
def test_a_y_above_an_eighth_of_the_budget_is_never_whole(entropy, monkeypatch):
  """Encoding streamed, y larger than an eighth of the budget (with the copy that joins its
  tiles, a quarter) is never held whole: z comes from
  a first stream over the image's rows, and the coding stream runs the analysis again on the
  bands it asks for. The strings and latents are the untiled ones, as with y whole."""
  model, _ = build_untrained(tiny_overrides(*entropy), seed=0)
  # 200x328 pads to 256x384: a 16x24 latent, 4x6 z.
  image = np.random.default_rng(3).integers(0, 256, (200, 328, 3), dtype=np.uint8)
  monkeypatch.setattr(tiling, "MIN_BAND_POSITIONS", 1)
  bands, latent_band = [], type(model).latent_band

  def counted(self, x, r0, r1, tile=None):  # the bands of y computed again, as they run
    def note(start):
      bands.append(int(start))
      return np.int32(0)

    with tf.control_dependencies([tf.numpy_function(note, [r0], tf.int32, stateful=True)]):
      return tf.identity(latent_band(self, x, r0, r1, tile))

  monkeypatch.setattr(type(model), "latent_band", counted)
  model.set_memory_budget(0)
  untiled = model.compress(image)
  y_mb = 16 * 24 * model.latent_depth * 4 / 2**20
  for budget_mb, whole in [(8 * y_mb, True), (4 * y_mb, False)]:
    bands.clear()
    model.set_memory_budget(budget_mb)
    assert model.entropy_model.streams()
    coded = model.compress(image)
    assert coded.strings == untiled.strings and coded.checks == untiled.checks
    assert_latents_agree(coded.y_hat, untiled.y_hat)  # its networks' bands: one position
    # Computed again band by band: the first stream's bands of 8 latent rows (2 z rows: its
    # pace at this budget), then the coding stream's.
    assert (not bands) == whole, bands
    if not whole:
      assert bands[:2] == [0, 8] and len(bands) > 2, bands
