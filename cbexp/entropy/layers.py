"""Small pieces the context models share: the checkerboard partition, the masked context
convolution and the 1x1 entropy-parameter network, each with its multiply-accumulate count."""

import numpy as np
import tensorflow as tf

# Anchors are the latent positions whose row + column is odd, as in He et al.'s reference code
# (CompressAI uses the other parity). In every 2x2 block: (0,1) and (1,0) are anchors,
# (0,0) and (1,1) are non-anchors.
ANCHOR_PARITY = 1


def anchor_mask(height, width):
  """Boolean [height, width] array, True at anchors. For tests and documentation."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return (rows + cols) % 2 == ANCHOR_PARITY


def split_checkerboard(t):
  """[B, H, W, C] -> (anchors, non_anchors), each packed to [B, H/2, W, C] (H, W even).

  Packing means no placeholder symbols are coded and 1x1 networks run on half the positions.
  """
  blocks = tf.nn.space_to_depth(t, 2)  # channel blocks of C: (0,0), (0,1), (1,0), (1,1)
  p00, p01, p10, p11 = tf.split(blocks, 4, axis=-1)
  return tf.concat([p01, p10], axis=2), tf.concat([p00, p11], axis=2)


def merge_checkerboard(anchors, non_anchors):
  """Inverse of ``split_checkerboard``."""
  p01, p10 = tf.split(anchors, 2, axis=2)
  p00, p11 = tf.split(non_anchors, 2, axis=2)
  return tf.nn.depth_to_space(tf.concat([p00, p01, p10, p11], axis=-1), 2)


def checkerboard_context_mask(kernel_size=5):
  """Taps a non-anchor may see: offsets (dy, dx) with dy + dx odd, i.e. its anchor neighbours
  (12 of 25 taps for 5x5). The centre and every other non-anchor are excluded."""
  offsets = np.arange(kernel_size) - kernel_size // 2
  dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
  return ((dy + dx) % 2 == 1).astype(np.float32)


class MaskedConv2D(tf.keras.layers.Conv2D):
  """A plain convolution whose kernel is multiplied by a fixed 0/1 mask on every call.

  The whole kernel is a trainable variable (and counted), masked taps simply never matter.
  """

  def __init__(self, filters, mask, **kwargs):
    mask = np.asarray(mask, np.float32)
    super().__init__(filters, mask.shape, padding="same", **kwargs)
    self.mask = tf.constant(mask[:, :, None, None])

  def convolution_op(self, inputs, kernel):
    return super().convolution_op(inputs, kernel * self.mask)

  def macs(self, positions):
    """Multiply-accumulates at ``positions`` output positions: every tap, masked ones too."""
    kh, kw, c_in, c_out = (int(d) for d in self.kernel.shape)
    return positions * kh * kw * c_in * c_out


# Where the non-anchor context is computed (``CheckerboardContext``): "coded", only at the
# non-anchor positions pass 2 codes (2.8x fewer multiply-adds), or "full_grid", a masked 5x5
# convolution over every position of which half is discarded. The two agree up to float
# summation order, which is enough to change a rounded scale index and so the bytes: models
# saved before the option existed (no key in their config) keep "full_grid", so their files
# still decode; the configs in conf/entropy/ choose "coded".
CONTEXT_POSITIONS = ("coded", "full_grid")


def non_anchor_taps(parity):
  """For the non-anchors of ``parity`` (0: (0,0) of each 2x2 block, 1: (1,1)), the 3x3 x 2
  correlation over the packed anchor grids [p01, p10] (``split_checkerboard``) that equals the
  5x5 checkerboard-masked correlation at those positions: an int array [3, 3, 2] of indexes into
  the flattened 5x5 kernel, 25 where the tap does not exist (a zero weight).

  At full-grid offset (dy, dx) from a non-anchor at (2i + parity, 2j + parity), the anchor is in
  grid p01 (even row, odd column) or p10 (odd row, even column) at packed position
  (i + a, j + b); each of the 12 unmasked taps lands on exactly one (grid, a, b)."""
  taps = np.full([3, 3, 2], 25)
  for dy in range(-2, 3):
    for dx in range(-2, 3):
      if (dy + dx) % 2 == 0:
        continue  # masked: the centre and the other non-anchors
      row, col = parity + dy, parity + dx  # full-grid position relative to block (0, 0)
      grid = 0 if row % 2 == 0 else 1  # p01 has even rows, p10 odd ones
      a, b = row // 2, (col - (1 if grid == 0 else 0)) // 2
      taps[a + 1, b + 1, grid] = (dy + 2) * 5 + (dx + 2)
  return taps


class CheckerboardContext(MaskedConv2D):
  """g_cm: the non-anchors' context from the decoded anchors, a 5x5 checkerboard-masked
  convolution (He et al.; weights: one 5x5 kernel, as in the published model).

  Called on the packed anchors, it returns the context packed like ``split_checkerboard``'s
  non-anchors. ``positions="coded"`` computes it only there: per
  non-anchor parity, a 3x3 correlation over the two packed anchor grids with the 12 unmasked
  taps gathered from the 5x5 kernel (9 * 2 = 18 taps at a quarter of the positions, twice,
  against 25 taps at every position: 25 / 9 = 2.8x fewer multiply-adds, and no zero-filled
  full grid). ``"full_grid"`` is the masked convolution over the whole grid (same values up to
  float summation order).
  """

  #: Packed rows of anchors on either side that a packed row of context reads (both positions:
  #: the 5x5 kernel reaches two full-grid rows, one packed row).
  halo_rows = 1

  def __init__(self, filters, positions="full_grid", **kwargs):
    if positions not in CONTEXT_POSITIONS:
      raise ValueError(f"context_positions must be one of {CONTEXT_POSITIONS}, got {positions!r}")
    super().__init__(filters, checkerboard_context_mask(5), **kwargs)
    self.positions = positions
    self._taps = [tf.constant(non_anchor_taps(p)) for p in (0, 1)]

  def call(self, anchors):
    if self.positions == "full_grid":
      _, context = split_checkerboard(
        super().call(merge_checkerboard(anchors, tf.zeros_like(anchors)))
      )
      return context
    # [p01 | p10] side by side (split_checkerboard's packing) -> stacked along channels.
    grids = tf.concat(tf.split(anchors, 2, axis=2), axis=-1)
    kernel = tf.reshape(self.kernel, [25, self.kernel.shape[2], self.filters])
    kernel = tf.concat([kernel, tf.zeros_like(kernel[:1])], axis=0)  # index 25: no tap
    contexts = []
    for taps in self._taps:
      k = tf.gather(kernel, taps)  # [3, 3, 2, C_in, C_out]
      k = tf.reshape(k, [3, 3, 2 * kernel.shape[1], self.filters])
      contexts.append(tf.nn.bias_add(tf.nn.conv2d(grids, k, strides=1, padding="SAME"), self.bias))
    return tf.concat(contexts, axis=2)  # [p00 | p11], as split_checkerboard packs them

  def macs(self, positions):
    """Multiply-accumulates on a latent grid of ``positions`` positions, as computed: "coded",
    at each non-anchor (half the positions) a 3x3 correlation over the two packed anchor grids
    (18 taps, 6 of them zero); "full_grid", the 5x5 masked convolution at every position."""
    if self.positions == "full_grid":
      return super().macs(positions)
    _, _, c_in, c_out = (int(d) for d in self.kernel.shape)
    return positions // 2 * 3 * 3 * 2 * c_in * c_out


class EntropyParameters(tf.keras.layers.Layer):
  """g_ep: 1x1 layers only (a spatial kernel would leak non-anchor information into anchors).

  Input: hyper features and, optionally, context features. The first layer is split into a
  hyper part (with the bias) and a context part so that a pass without context (checkerboard
  anchors, the hyperprior baseline) computes exactly "context = 0" without building a zero
  tensor; the parameters are those of one dense layer on the concatenation.
  Output: (mean, scale_index), ``latent_depth`` channels each.
  """

  def __init__(self, widths, latent_depth, with_context, name="entropy_parameters"):
    super().__init__(name=name)
    self.from_hyper = tf.keras.layers.Dense(widths[0], name="layer_0_hyper")
    self.from_context = (
      tf.keras.layers.Dense(widths[0], use_bias=False, name="layer_0_context")
      if with_context
      else None
    )
    self.hidden = [
      tf.keras.layers.Dense(w, activation=tf.nn.relu, name=f"layer_{i + 1}")
      for i, w in enumerate(widths[1:])
    ]
    self.out = tf.keras.layers.Dense(2 * latent_depth, name=f"layer_{len(widths)}")

  def call(self, hyper, context=None):
    h = self.from_hyper(hyper)
    if context is not None:
      h += self.from_context(context)
    h = tf.nn.relu(h)
    for layer in self.hidden:
      h = layer(h)
    mean, scale_index = tf.split(self.out(h), 2, axis=-1)
    return mean, scale_index

  def macs(self, positions, with_context):
    """Multiply-accumulates on ``positions`` positions; without context (anchors, the
    hyperprior) the first layer's context part is not computed."""
    layers = [self.from_hyper] + ([self.from_context] if with_context else [])
    return sum(dense_macs(layer, positions) for layer in layers + self.hidden + [self.out])


def dense_macs(layer, positions):
  """Multiply-accumulates of a Keras Dense layer applied at ``positions`` positions."""
  c_in, c_out = (int(d) for d in layer.kernel.shape)
  return positions * c_in * c_out
