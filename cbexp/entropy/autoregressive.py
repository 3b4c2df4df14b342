"""Serial autoregressive context model (Minnen, Ballé & Toderici, NeurIPS 2018) on the ms2020
transforms, with LRP. Everything but the context is the checkerboard model's (one hyper-synthesis,
the 1x1 entropy-parameter network on concat[context, hyper], LRP from the hyper features), so the
pair isolates serial vs two-pass context.

Quantization and coding (the choice that makes estimate and bitstream agree exactly):

* The latents are quantized to integers, ``q = round(y)``, independently of any mean (as in the
  2018 paper). The context at a position is the 5x5 masked convolution (taps strictly before the
  centre in raster order) of ``q``. A parallel pass over ``q`` therefore sees exactly what the
  serial decoder sees; rounding *around the mean* (``round(y - mu) + mu``) would not allow that,
  because mu depends on the context, which depends on earlier reconstructions.
* ``q`` is coded with the Gaussian N(mu, s) integrated over the unit bin around each integer. tfc
  tables exist only for fixed distributions, so mu is quantized to a grid of ``1 / mean_steps``:
  ``round(mu * K) = K * r + j`` with integer r and 0 <= j < K; the symbol ``q - r`` is coded with
  the table of N(j / K, s). The tables (num_scales x mean_steps) come from
  tfc.ContinuousIndexedEntropyModel; the scale index is rounded as in ``GaussianConditional``.
  The estimated rate (``training=False``) evaluates exactly this quantized model.
* Training: noisy rate with the continuous mean and scale index (the usual upper bound), y_hat
  = round(y) with a straight-through gradient, plus 0.5 * tanh(lrp(hyper)).

Coding is sequential over positions in raster order, inside one graph (nested tf.while_loops over
rows and columns): the range coder (tfc's incremental ``gen_ops``) codes the M symbols of one
position at a time. Encoder and decoder run the *same* loop, so the parameters they use come from
identical ops on identical inputs (bit-exact on one machine and build). Per row, the contribution
of the two rows above to the context is one small convolution; per position only the two left
neighbours and the 1x1 layers remain.
"""
import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc
from tensorflow_compression.python.ops import gen_ops

from cbexp.entropy.base import CodingCost, EntropyModel, LatentOutput, verify_strings
from cbexp.entropy.layers import EntropyParameters, MaskedConv2D
from cbexp.models.transforms import HyperSynthesisTransform, SliceTransform


def raster_context_mask(kernel_size=5):
  """Taps strictly before the centre in raster order (12 of 25 for 5x5): every tap of the rows
  above, and the taps left of the centre in its own row."""
  mask = np.zeros([kernel_size, kernel_size], np.float32)
  centre = kernel_size // 2
  mask[:centre, :] = 1.
  mask[centre, :centre] = 1.
  return mask


class QuantizedMeanGaussian(tf.Module):
  """Integer symbols under N(mu, s) on unit bins, mu on a 1/mean_steps grid, s from the scale
  table: a tfc.ContinuousIndexedEntropyModel with index ranges (num_scales, mean_steps)."""

  def __init__(self, num_scales, scale_min, scale_max, mean_steps):
    super().__init__(name="quantized_mean_gaussian")
    self.num_scales, self.mean_steps = int(num_scales), int(mean_steps)
    if self.mean_steps < 1:
      raise ValueError(f"autoregressive: mean_steps must be >= 1, got {mean_steps}")
    offset = tf.math.log(float(scale_min))
    factor = (tf.math.log(float(scale_max)) - offset) / (self.num_scales - 1)
    self._parameter_fns = dict(
        scale=lambda i: tf.math.exp(offset + factor * i[..., 0]),
        loc=lambda i: i[..., 1] / float(self.mean_steps))
    self._model = self._make(compression=False)
    self._coder = None

  def _make(self, compression):
    return tfc.ContinuousIndexedEntropyModel(
        tfc.NoisyNormal, index_ranges=(self.num_scales, self.mean_steps),
        parameter_fns=self._parameter_fns, coding_rank=3, channel_axis=-1,
        compression=compression)

  def build_coder(self):
    if self._coder is None:
      self._coder = self._make(compression=True)
      self.cost = CodingCost(self._coder)

  @property
  def coder(self):
    if self._coder is None:
      raise RuntimeError("range-coding tables are not built: call model.build_coders() "
                         "after training or restoring weights, before compress/decompress")
    return self._coder

  def split(self, scale_index, mean):
    """-> (integer part r of the grid mean, flat table index) as (float, int32)."""
    steps = float(self.mean_steps)
    grid = tf.round(mean * steps)
    integer = tf.math.floor(grid / steps)
    fraction = tf.cast(grid - integer * steps, tf.int32)
    scale = tf.cast(tf.clip_by_value(tf.round(scale_index), 0., self.num_scales - 1.), tf.int32)
    return integer, scale * self.mean_steps + fraction

  def bits(self, q, scale_index, mean):
    """Information content (bits per image) of the integers q under the coded model."""
    integer, flat = self.split(scale_index, mean)
    indexes = tf.stack([flat // self.mean_steps, flat % self.mean_steps], axis=-1)
    _, bits = self._model(q - integer, indexes, training=False)
    return bits


class AutoregressiveEntropyModel(EntropyModel):
  num_strings = 1
  lrp_outside_entropy_loop = True  # LRP sees the hyper features only

  def __init__(self, latent_depth, hyper_synthesis_filters, scale_table,
               hidden_filters=(224, 128), param_widths=(3, 2), context_multiplier=2,
               mean_steps=16, numerics="float", name="autoregressive"):
    if numerics != "float":  # its serial loop would need its own integer context and g_ep
      raise ValueError(f"autoregressive: entropy.numerics={numerics} is not supported (only "
                       f"float); use hyperprior, checkerboard, charm or charm_checkerboard")
    super().__init__(latent_depth, scale_table, numerics=numerics, name=name)
    self.hyper_synthesis = HyperSynthesisTransform(hyper_synthesis_filters, latent_depth)
    self.context_model = MaskedConv2D(context_multiplier * latent_depth, raster_context_mask(5),
                                      name="context_model")
    self.entropy_parameters = EntropyParameters(
        [w * latent_depth for w in param_widths], latent_depth, with_context=True)
    self.lrp = SliceTransform(hidden_filters, latent_depth, name="lrp")
    self.quantized_mean = QuantizedMeanGaussian(**scale_table, mean_steps=mean_steps)

  def parameter_groups(self):
    return {"hyper_synthesis": [self.hyper_synthesis], "context_model": [self.context_model],
            "entropy_parameters": [self.entropy_parameters], "lrp": [self.lrp]}

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

  def _serial(self, hyper, code_position, handle):
    """Visits positions in raster order; ``code_position(handle, i, j, flat_index, integer)``
    codes one position's M symbols and returns (handle, q at that position [B, M])."""
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
        integer, flat = self.quantized_mean.split(scale_index, mean)
        handle, q = code_position(handle, i, j, flat, integer)
        return j + 1, handle, left1, q, row.write(j, q)

      _, handle, _, _, row = tf.while_loop(
          lambda j, *_: j < width, column_body,
          (0, handle, zeros_row[:, 0], zeros_row[:, 0],
           tf.TensorArray(tf.float32, size=width, element_shape=[None, depth])))
      row = tf.transpose(row.stack(), [1, 0, 2])  # [B, W, M]
      row.set_shape(above1.shape)  # static shapes, when known, must not change across rows
      return i + 1, handle, above1, row, rows.write(i, row)

    _, handle, _, _, rows = tf.while_loop(
        lambda i, *_: i < height, row_body,
        (0, handle, zeros_row, zeros_row,
         tf.TensorArray(tf.float32, size=height, element_shape=[None, None, depth])),
        parallel_iterations=1)
    return handle, tf.transpose(rows.stack(), [1, 0, 2, 3])  # [B, H, W, M]

  def compress(self, y, z_hat):
    hyper = self.hyper_synthesis(z_hat)
    coder = self.quantized_mean.coder
    q_all = tf.round(y)

    def encode(handle, i, j, flat, integer):
      q = q_all[:, i, j]
      symbols = tf.cast(q - integer, tf.int32) - tf.gather(coder.cdf_offset, flat)
      return gen_ops.entropy_encode_index(handle, flat, symbols), q

    handle = gen_ops.create_range_encoder(tf.shape(y)[:1], coder.cdf)
    handle, q = self._serial(hyper, encode, handle)
    string = gen_ops.entropy_encode_finalize(handle)
    # The symbol check (cbexp.bitstream) covers the coded integers q, which decide the image;
    # the table indexes stay inside the loop.
    self.gaussian.record_check(q)
    return [string], q + self._residual(hyper)

  def decompress(self, strings, z_hat, y_shape):
    hyper = self.hyper_synthesis(z_hat)
    return self._decode_serial(strings[0], hyper) + self._residual(hyper, decoding=True)

  def _decode_serial(self, string, hyper):
    """The sequential part of decoding: every position's context, g_ep and range decoding.
    Each position's symbols are coded again and costed as they are decoded (the loop's handle
    is a decoder, an encoder and a bit count), and the string is verified at the end
    (``verify_strings``)."""
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
    handles = (gen_ops.create_range_decoder(string, coder.cdf),
               gen_ops.create_range_encoder(batch, coder.cdf), tf.zeros(batch, tf.float64))
    (decoder, encoder, bits), q = self._serial(hyper, decode, handles)
    q = verify_strings(q, string, gen_ops.entropy_encode_finalize(encoder), bits,
                       finalized=gen_ops.entropy_decode_finalize(decoder))
    self.gaussian.record_check(q)  # as compress
    return q
