"""Small pieces the context models share: the checkerboard partition, the masked context
convolution and the 1x1 entropy-parameter network."""
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
    self.from_context = (tf.keras.layers.Dense(widths[0], use_bias=False, name="layer_0_context")
                         if with_context else None)
    self.hidden = [tf.keras.layers.Dense(w, activation=tf.nn.relu, name=f"layer_{i + 1}")
                   for i, w in enumerate(widths[1:])]
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
