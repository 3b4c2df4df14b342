"""Serial autoregressive context model (Minnen, Ballé & Toderici, NeurIPS 2018) on the ms2020
transforms, with LRP: the checkerboard model with its two-pass context replaced by a serial one
(one hyper-synthesis, the 1x1 entropy-parameter network on concat[context, hyper], LRP from the
hyper features), so the pair isolates serial vs two-pass context.
"""

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc
from tensorflow_compression.python.ops import gen_ops

from cbexp.entropy.base import (
  CodingCost,
  EntropyModel,
  LatentOutput,
  require_built,
  round_scale_indexes,
  scale_table_fn,
  verify_strings,
)
from cbexp.entropy.hyperprior import MeanScaleHyperprior
from cbexp.entropy.layers import MaskedConv2D, dense_macs
from cbexp.models.transforms.layers import transform_macs


def raster_context_mask(kernel_size=5):
  """Taps strictly before the centre in raster order (12 of 25 for 5x5): every tap of the rows
  above, and the taps left of the centre in its own row."""
  mask = np.zeros([kernel_size, kernel_size], np.float32)
  centre = kernel_size // 2
  mask[:centre, :] = 1.0
  mask[centre, :centre] = 1.0
  return mask


class QuantizedMeanGaussian(tf.Module):
  """Integer symbols under N(mu, s) on unit bins, mu on a 1/mean_steps grid, s from the scale
  table: a tfc.ContinuousIndexedEntropyModel with index ranges (num_scales, mean_steps)."""

  def __init__(self, num_scales, scale_min, scale_max, mean_steps):
    super().__init__(name="quantized_mean_gaussian")
    self.num_scales, self.mean_steps = int(num_scales), int(mean_steps)
    if self.mean_steps < 1:
      raise ValueError(f"autoregressive: mean_steps must be >= 1, got {mean_steps}")
    scale_fn = scale_table_fn(self.num_scales, scale_min, scale_max)
    self._parameter_fns = dict(
      scale=lambda i: scale_fn(i[..., 0]), loc=lambda i: i[..., 1] / float(self.mean_steps)
    )
    self._model = self._make(compression=False)
    self._coder = None

  def _make(self, compression):
    return tfc.ContinuousIndexedEntropyModel(
      tfc.NoisyNormal,
      index_ranges=(self.num_scales, self.mean_steps),
      parameter_fns=self._parameter_fns,
      coding_rank=3,
      channel_axis=-1,
      compression=compression,
    )

  def build_coder(self):
    if self._coder is None:
      self._coder = self._make(compression=True)
      self.cost = CodingCost(self._coder)

  @property
  def coder(self):
    return require_built(self._coder)

  def split(self, scale_index, mean):
    """-> (integer part r of the grid mean, flat table index) as (float, int32)."""
    steps = float(self.mean_steps)
    grid = tf.round(mean * steps)
    integer = tf.math.floor(grid / steps)
    fraction = tf.cast(grid - integer * steps, tf.int32)
    scale = tf.cast(round_scale_indexes(scale_index, self.num_scales), tf.int32)
    return integer, scale * self.mean_steps + fraction

  def bits(self, q, scale_index, mean):
    """Information content (bits per image) of the integers q under the coded model."""
    integer, flat = self.split(scale_index, mean)
    indexes = tf.stack([flat // self.mean_steps, flat % self.mean_steps], axis=-1)
    _, bits = self._model(q - integer, indexes, training=False)
    return bits


class AutoregressiveEntropyModel(MeanScaleHyperprior, EntropyModel):
  """Quantization and coding (the choice that makes estimate and bitstream agree exactly):

  * The latents are quantized to integers, ``q = round(y)``, independently of any mean (as in
    the 2018 paper). The context at a position is the 5x5 masked convolution (taps strictly
    before the centre in raster order) of ``q``. A parallel pass over ``q`` therefore sees
    exactly what the serial decoder sees; rounding *around the mean* (``round(y - mu) + mu``)
    would not allow that, because mu depends on the context, which depends on earlier
    reconstructions.
  * ``q`` is coded with the Gaussian N(mu, s) integrated over the unit bin around each integer.
    tfc tables exist only for fixed distributions, so mu is quantized to a grid of
    ``1 / mean_steps``: ``round(mu * K) = K * r + j`` with integer r and 0 <= j < K; the symbol
    ``q - r`` is coded with the table of N(j / K, s) (``QuantizedMeanGaussian``). The estimated
    rate (``training=False``) evaluates exactly this quantized model.
  * Training: noisy rate with the continuous mean and scale index (the usual upper bound),
    y_hat = round(y) with a straight-through gradient, plus 0.5 * tanh(lrp(hyper)).

  Coding is sequential over positions in raster order, inside one graph (nested
  tf.while_loops over rows and columns): the range coder (tfc's incremental ``gen_ops``) codes
  the M symbols of one position at a time. Encoder and decoder run the *same* loop, so the
  parameters they use come from identical ops on identical inputs (bit-exact on one machine and
  build). Per row, the contribution
  of the two rows above to the context is one small convolution; per position only the two
  left neighbours and the 1x1 layers remain.
  """

  default_name = "autoregressive"

  def _make_context(
    self, hyper_synthesis_filters, scale_table, context_multiplier=2, mean_steps=16
  ):
    if self.numerics != "float":  # its serial loop would need its own integer context and g_ep
      raise ValueError(
        f"autoregressive: entropy.numerics={self.numerics} is not supported (only "
        f"float); use hyperprior, checkerboard, charm or charm_checkerboard"
      )
    self.context_model = MaskedConv2D(
      context_multiplier * self.latent_depth, raster_context_mask(5), name="context_model"
    )
    self.quantized_mean = QuantizedMeanGaussian(**scale_table, mean_steps=mean_steps)
    return True

  def parameter_groups(self):
    return {
      "hyper_synthesis": [self.hyper_synthesis],
      "context_model": [self.context_model],
      "entropy_parameters": [self.entropy_parameters],
      "lrp": [self.lrp],
    }

  def build_coders(self):
    super().build_coders()
    self.quantized_mean.build_coder()

  # --- training / estimation: the masked convolution in parallel ---------------------------
  def call(self, y, z_hat, training):
    hyper = self.hyper_synthesis(z_hat)
    q = tfc.round_st(y)
    mean, scale_index = self.entropy_parameters(hyper, self.context_model(q))
    if training:
      bits = self.gaussian.rate(y, scale_index, mean, training=True)
    else:
      bits = self.quantized_mean.bits(tf.round(y), scale_index, mean)
    return LatentOutput(y_hat=q + self._residual(hyper), bits=bits)

  # --- coding: one position at a time --------------------------------------------------------
  def _serial_weights(self):
    """The context convolution and g_ep's first layer, rearranged for per-row/per-position use."""
    kernel = self.context_model.kernel * self.context_model.mask  # [5, 5, M, 2M]
    depth = self.latent_depth
    from_context = self.entropy_parameters.from_context.kernel  # [2M, 3M]
    # The two left taps of the centre row, applied to concat[q(j-2), q(j-1)], folded into
    # g_ep's first layer (no nonlinearity in between): [2M, 3M].
    left = tf.reshape(kernel[2, :2], [2 * depth, -1]) @ from_context
    return kernel[:2], left, from_context

  def _serial(self, hyper, code_position, handle, index_offset=0.0):
    """Visits positions in raster order; ``code_position(handle, i, j, flat_index, integer)``
    codes one position's M symbols and returns (handle, q at that position [B, M]).
    ``index_offset`` is added to every scale index (a ``CodingRecorder``'s)."""
    batch, height, width = tf.unstack(tf.shape(hyper)[:3])
    depth = self.latent_depth
    above_kernel, left_kernel, from_context = self._serial_weights()
    hyper_part = self.entropy_parameters.from_hyper(hyper)  # [B, H, W, 3M], all positions at once
    zeros_row = tf.zeros([batch, width, depth])

    def row_body(i, handle, above2, above1, rows):
      # Context from the two rows above, for the whole row: [B, W, 2M] (+ the conv's bias).
      slab = tf.pad(tf.stack([above2, above1], axis=1), [[0, 0], [0, 0], [2, 2], [0, 0]])
      context_above = tf.nn.conv2d(slab, above_kernel, 1, "VALID")[:, 0] + self.context_model.bias
      row_part = hyper_part[:, i] + tf.tensordot(context_above, from_context, 1)  # [B, W, 3M]

      def column_body(j, handle, left2, left1, row):
        h = tf.nn.relu(row_part[:, j] + tf.concat([left2, left1], -1) @ left_kernel)
        for layer in self.entropy_parameters.hidden:
          h = layer(h)
        mean, scale_index = tf.split(self.entropy_parameters.out(h), 2, axis=-1)
        if index_offset:
          scale_index += index_offset
        integer, flat = self.quantized_mean.split(scale_index, mean)
        handle, q = code_position(handle, i, j, flat, integer)
        return j + 1, handle, left1, q, row.write(j, q)

      _, handle, _, _, row = tf.while_loop(
        lambda j, *_: j < width,
        column_body,
        (
          0,
          handle,
          zeros_row[:, 0],
          zeros_row[:, 0],
          tf.TensorArray(tf.float32, size=width, element_shape=[None, depth]),
        ),
      )
      row = tf.transpose(row.stack(), [1, 0, 2])  # [B, W, M]
      row.set_shape(above1.shape)  # static shapes, when known, must not change across rows
      return i + 1, handle, above1, row, rows.write(i, row)

    _, handle, _, _, rows = tf.while_loop(
      lambda i, *_: i < height,
      row_body,
      (
        0,
        handle,
        zeros_row,
        zeros_row,
        tf.TensorArray(tf.float32, size=height, element_shape=[None, None, depth]),
      ),
      parallel_iterations=1,
    )
    return handle, tf.transpose(rows.stack(), [1, 0, 2, 3])  # [B, H, W, M]

  def _code(self, hyper, code_position, handle, decoding=False):
    """``_serial``, reporting to the installed ``CodingRecorder`` if any: per position (in
    raster order, [H*W, B, M]) the coded table index (scale row * mean_steps + mean-grid
    fraction), q minus the mean's integer part, and the grid mean; the teacher is q
    [B, H, W, M]. The decoder applies the recorder's index offset."""
    recorder = self.gaussian.recorder
    if recorder is None:
      return self._serial(hyper, code_position, handle)
    width = tf.shape(hyper)[2]
    size = tf.shape(hyper)[1] * width

    def record_position(state, i, j, flat, integer):
      handle, flats, integers = state
      handle, q = code_position(handle, i, j, flat, integer)
      k = i * width + j
      return (handle, flats.write(k, flat), integers.write(k, integer)), q

    state = (handle, tf.TensorArray(tf.int32, size=size), tf.TensorArray(tf.float32, size=size))
    (handle, flats, integers), q = self._serial(
      hyper, record_position, state, recorder.index_offset if decoding else 0.0
    )
    flats, integers = flats.stack(), integers.stack()
    steps = self.quantized_mean.mean_steps
    q_flat = tf.reshape(tf.transpose(q, [1, 2, 0, 3]), tf.shape(integers))
    recorder.record(
      flats, q_flat - integers, integers + tf.cast(flats % steps, tf.float32) / steps, teacher=q
    )
    return handle, q

  def compress(self, y, z_hat):
    hyper = self.hyper_synthesis(z_hat)
    coder = self.quantized_mean.coder
    q_all = tf.round(y)

    def encode(handle, i, j, flat, integer):
      q = q_all[:, i, j]
      symbols = tf.cast(q - integer, tf.int32) - tf.gather(coder.cdf_offset, flat)
      return gen_ops.entropy_encode_index(handle, flat, symbols), q

    handle = gen_ops.create_range_encoder(tf.shape(y)[:1], coder.cdf)
    handle, q = self._code(hyper, encode, handle)
    string = gen_ops.entropy_encode_finalize(handle)
    # The symbol check (cbexp.codec.bitstream) covers the coded integers q, which decide the image;
    # the table indexes stay inside the loop.
    self.gaussian.record_check(q)
    return [string], q + self._residual(hyper)

  def decode_stages(self, strings, z_hat, y_shape, stage):
    hyper = stage("hyper_synthesis", self.hyper_synthesis, z_hat)
    q = stage("serial_loop", self._decode_serial, strings[0], hyper)
    return stage("lrp", lambda h, q: q + self._residual(h, decoding=True), hyper, q)

  def _decode_serial(self, string, hyper):
    """The sequential part of decoding: every position's context, g_ep and range decoding.
    Each position's symbols are coded again and costed as they are decoded (the loop's handle
    is a decoder, an encoder and a bit count), and the string is verified at the end
    (``verify_strings``). With a recorder's teacher, each position takes the teacher's q
    instead of range decoding."""
    recorder = self.gaussian.recorder
    teacher = None if recorder is None else recorder.next_teacher()
    if teacher is not None:
      return self._code(
        hyper,
        lambda handle, i, j, flat, integer: (handle, teacher[:, i, j]),
        tf.zeros([]),
        decoding=True,
      )[1]
    coder = self.quantized_mean.coder
    cost = self.quantized_mean.cost
    depth = self.latent_depth

    def decode(handles, i, j, flat, integer):
      decoder, encoder, bits = handles
      decoder, symbols = gen_ops.entropy_decode_index(decoder, flat, [depth], tf.int32)
      encoder = gen_ops.entropy_encode_index(encoder, flat, symbols)
      q = tf.cast(symbols + tf.gather(coder.cdf_offset, flat), tf.float32) + integer
      return (decoder, encoder, bits + cost(symbols, flat)), q

    string = tf.convert_to_tensor(string, tf.string)
    batch = tf.shape(hyper)[:1]
    handles = (
      gen_ops.create_range_decoder(string, coder.cdf),
      gen_ops.create_range_encoder(batch, coder.cdf),
      tf.zeros(batch, tf.float64),
    )
    (decoder, encoder, bits), q = self._code(hyper, decode, handles, decoding=True)
    q = verify_strings(
      q,
      string,
      gen_ops.entropy_encode_finalize(encoder),
      bits,
      finalized=gen_ops.entropy_decode_finalize(decoder),
    )
    self.gaussian.record_check(q)  # as compress
    return q

  def decode_macs(self, latent_hw, z_hw):
    """As the serial loop computes: per row, the context of the two rows above (2x5 taps) for
    the whole row and its product with g_ep's context weights; per position, the two left taps
    folded into g_ep's first layer (2M x 3M) and g_ep's other layers; once per image, that
    folding ([2M, 2M] x [2M, 3M]); g_ep's hyper part at every position at once."""
    positions = latent_hw[0] * latent_hw[1]
    net = self.entropy_parameters
    depth = self.latent_depth
    _, _, c_in, c_context = (int(d) for d in self.context_model.kernel.shape)
    width_0 = int(net.from_context.kernel.shape[1])
    return {
      "hyper_synthesis": transform_macs(self.hyper_synthesis, *z_hw),
      "context": positions * 10 * c_in * c_context + 2 * depth * c_context * width_0,
      "entropy_parameters": (
        dense_macs(net.from_hyper, positions)
        + dense_macs(net.from_context, positions)
        + positions * 2 * depth * width_0
        + sum(dense_macs(layer, positions) for layer in net.hidden + [net.out])
      ),
      "lrp": transform_macs(self.lrp, *latent_hw),
    }
