"""Tiled analysis and synthesis: a transform run over tiles whose halo covers its receptive field,
each tile's interior kept, so that memory follows the tile, not the image.

The halo comes from the layer list (``transform_reach``): output sample j of a transform depends
only on the input samples within its receptive field, so a tile computed with that many real
neighbouring samples around it has the same interior as the whole image. Tiles are aligned on
the latent grid (16 image pixels), where every backbone's sampling grid lines up, and stop at the
image's own border, where each layer's zero padding is the untiled one. On the CPU the interior
values are bit-identical to the untiled transform (tests/models/test_tiling.py), so the symbols,
the bitstream and its format do not depend on the tile size.

The tile size is a number of latent samples per side, chosen from a memory budget
(``tile_for_budget``); 0 means untiled.
"""

import math

from cbexp.constants import DEFAULT_MEMORY_BUDGET_MB  # noqa: F401 (the default, for callers)
from cbexp.models.transforms.layers import transform_reach

LATENT_STRIDE = 16  # image pixels per latent sample: the analysis's scale, every backbone's
BYTES_PER_VALUE = 4  # float32 activations


def halo_latents(transform):
  """Latent samples of real context needed on each side of a tile of ``transform``'s output:
  its receptive-field radius (in input samples, ``transform_reach``) in latent samples, rounded
  up. The analysis's input is the image (16 pixels per latent sample), the synthesis's the
  latent."""
  radius, scale = transform_reach(transform)
  per_latent = scale if scale > 1 else 1
  return math.ceil(radius / per_latent)


def activation_bytes_per_latent(transform, input_depth):
  """The largest input + output of one of ``transform``'s layers, in bytes per latent sample,
  measured by running it on a 4x4-latent input (a block counts as one layer: the factor that
  ``tile_for_budget`` applies covers what runs inside it)."""
  import tensorflow as tf

  _, scale = transform_reach(transform)
  side = 4 * (LATENT_STRIDE if scale > 1 else 1)
  x = tf.zeros([1, side, side, input_depth])
  largest = 0
  for layer in getattr(transform, "layers", transform):
    y = layer(x)
    largest = max(largest, int(tf.size(x)) + int(tf.size(y)))
    x = y
  return BYTES_PER_VALUE * largest / 16


# What a transform's tile holds at its peak, in multiples of its largest layer's input + output:
# the temporaries of transposed convolutions and GDN. Measured on the CPU (peak resident memory of
# one tile, 2026-12-06): the ms2020 synthesis 7.2x (430 KB per latent sample), the hyper-synthesis
# 4x (``EntropyModel.set_memory_budget``).
TRANSFORM_OVERHEAD = 8.0


def tile_for_budget(budget_bytes, bytes_per_latent, overhead=TRANSFORM_OVERHEAD, smallest=8):
  """The tile side (latent samples) whose activations, ``overhead`` times the largest layer's
  input + output (the temporaries inside a layer and its block), fit in ``budget_bytes``; an
  int32 scalar tensor where ``budget_bytes`` is one (a budget that depends on the image)."""
  import tensorflow as tf

  if tf.is_tensor(budget_bytes):
    area = tf.cast(budget_bytes, tf.float64) / (overhead * bytes_per_latent)
    return tf.maximum(smallest, tf.cast(tf.sqrt(tf.maximum(area, 0.0)), tf.int32))
  area = budget_bytes / (overhead * bytes_per_latent)
  return max(smallest, int(math.isqrt(int(area))))


def tiled(fn, x, tile, halo, stride_in, stride_out, out_channels, out_dtype):
  """``fn`` over ``x`` ([1, H, W, C]) by tiles of ``tile`` x ``tile`` latent samples, each read
  with ``halo`` latent samples of context on every side that has a neighbour, and its interior
  kept: the [1, H', W', out_channels] output that ``fn(x)`` gives, with the peak memory of one
  tile. ``stride_in`` / ``stride_out``: input and output samples per latent sample (16 and 1 for
  the analysis, 1 and 16 for the synthesis); H and W are multiples of ``stride_in``. Runs in a
  graph: the tiles are a tf.while_loop, one at a time, so each tile's activations are freed
  before the next is computed."""
  import tensorflow as tf

  rows = tf.shape(x)[1] // stride_in
  cols = tf.shape(x)[2] // stride_in
  num_rows = (rows + tile - 1) // tile
  num_cols = (cols + tile - 1) // tile

  def pieces(count):  # tiles of a row, or rows: uneven sizes, joined by concat
    return tf.TensorArray(
      out_dtype,
      size=count,
      infer_shape=False,
      element_shape=tf.TensorShape([None, None, out_channels]),
    )

  def span(index, size):
    start = index * tile
    end = tf.minimum(start + tile, size)
    return start, end, tf.maximum(start - halo, 0), tf.minimum(end + halo, size)

  def row(i, done_rows):
    r0, r1, a0, a1 = span(i, rows)

    def column(j, done_tiles):
      c0, c1, b0, b1 = span(j, cols)
      out = fn(x[:, a0 * stride_in : a1 * stride_in, b0 * stride_in : b1 * stride_in, :])
      out = out[
        0,
        (r0 - a0) * stride_out : (r1 - a0) * stride_out,
        (c0 - b0) * stride_out : (c1 - b0) * stride_out,
        :,
      ]
      # Transposed, so that concat (along the first axis) joins the tiles of a row.
      return j + 1, done_tiles.write(j, tf.transpose(out, [1, 0, 2]))

    tiles = pieces(num_cols)
    _, tiles = tf.while_loop(
      lambda j, _: j < num_cols, column, (tf.constant(0), tiles), parallel_iterations=1
    )
    return i + 1, done_rows.write(i, tf.transpose(tiles.concat(), [1, 0, 2]))

  _, done = tf.while_loop(
    lambda i, _: i < num_rows, row, (tf.constant(0), pieces(num_rows)), parallel_iterations=1
  )
  return done.concat()[None]


# --- the entropy model's networks: row bands over the whole width --------------------------------
# The entropy model codes the whole latent (one string per pass or slice), but the networks that
# compute its means and scales (the hyper-synthesis's output aside) hold activations several
# times y's size. They run over bands of latent rows, each with ``halo`` rows of real context
# above and below: full-width bands, because the checkerboard's packed layout
# (``cbexp.entropy.layers.split_checkerboard``) puts two half grids side by side along the width.
#
# A band is never smaller than MIN_BAND_POSITIONS latent positions: on the CPU, a matrix product
# with fewer rows than a few thousand takes another kernel, which sums in another order (values
# differ in the last bits, enough to flip a rounded symbol); from about 2,500 rows on, each row
# of the product is the same as in the whole tensor's (measured for the 1x1 layers of the paper
# models, 2 threads). The last band takes the rows left over, so it is never smaller either.
MIN_BAND_POSITIONS = 16384


def band_positions_for_budget(budget_bytes, widest_layer_values, overhead=4.0):
  """Latent positions per band whose activations (``overhead`` times the widest layer's input +
  output, ``widest_layer_values`` values per position) fit ``budget_bytes``; at least
  MIN_BAND_POSITIONS."""
  fits = int(budget_bytes / (overhead * BYTES_PER_VALUE * widest_layer_values))
  return max(MIN_BAND_POSITIONS, fits)


def row_bands(fn, inputs, band_positions, halo, out_channels):
  """``fn(*inputs)`` computed band by band: ``inputs`` are [1, R, W, C_i] tensors with the same
  R and W, ``fn`` returns a tuple of [1, r, W, C_k] tensors (r: the rows it was given), and
  ``out_channels`` gives each C_k. Each band has max(1, band_positions // W) rows (the last one
  the rest) and is read with ``halo`` rows of context above and below where the input has them;
  its interior rows are kept. -> the tuple of [1, R, W, C_k] outputs, equal to ``fn(*inputs)``
  for a ``fn`` whose output row depends only on input rows within ``halo``. A tf.while_loop, one
  band at a time."""
  import tensorflow as tf

  rows, width = tf.shape(inputs[0])[1], tf.shape(inputs[0])[2]
  band = tf.maximum(1, band_positions // tf.maximum(width, 1))
  num_bands = tf.maximum(1, rows // band)

  def body(i, done):
    r0 = i * band
    r1 = tf.where(i == num_bands - 1, rows, r0 + band)
    a0, a1 = tf.maximum(r0 - halo, 0), tf.minimum(r1 + halo, rows)
    outputs = fn(*(x[:, a0:a1] for x in inputs))
    return i + 1, tuple(
      pieces.write(i, out[0, r0 - a0 : r1 - a0]) for pieces, out in zip(done, outputs)
    )

  pieces = tuple(
    tf.TensorArray(
      tf.float32, size=num_bands, infer_shape=False, element_shape=[None, None, channels]
    )
    for channels in out_channels
  )
  _, done = tf.while_loop(
    lambda i, _: i < num_bands, body, (tf.constant(0), pieces), parallel_iterations=1
  )
  return tuple(p.concat()[None] for p in done)
