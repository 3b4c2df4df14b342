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


def tile_for_budget(budget_bytes, bytes_per_latent, overhead=4.0, smallest=8):
  """The tile side (latent samples) whose activations, ``overhead`` times the largest layer's
  input + output (the temporaries inside a layer and its block), fit in ``budget_bytes``."""
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
