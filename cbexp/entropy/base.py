"""What every entropy model provides, and the conditional Gaussian they all code y with.

An entropy model codes the latent ``y`` given the decoded hyperprior ``z_hat``. It owns everything
that turns ``z_hat`` (and already decoded parts of ``y``) into means and scales: its hyper-synthesis
transform(s), context model, entropy-parameter networks and latent residual prediction (LRP).
The shared parts (g_a, g_s, h_a, the factorized prior on z) live in ``cbexp.model``.

The three methods mirror each other, in the style of CompressAI's latent codecs:

* ``call(y, z_hat, training)`` -> ``LatentOutput``: the training forward pass. ``bits`` is the
  rate of the noisy latents when ``training`` is true, the information content of the quantized
  latents otherwise (the *estimated* rate, to compare with the real strings).
* ``compress(y, z_hat)`` -> ``(strings, y_hat)``: real range-coded strings (``num_strings`` of
  them, each of shape ``[batch]``) plus the reconstruction the decoder will produce.
* ``decompress(strings, z_hat, y_shape)`` -> ``y_hat``, bit-identical to the encoder's.

To add an entropy model: one module in ``cbexp/entropy/`` with a subclass of ``EntropyModel``,
and one file ``conf/entropy/<name>.yaml`` whose ``_target_`` names the class. Nothing else.
"""
import dataclasses

import tensorflow as tf
import tensorflow_compression as tfc


@dataclasses.dataclass
class LatentOutput:
  y_hat: tf.Tensor  # reconstruction fed to the synthesis (straight-through rounding, LRP added)
  bits: tf.Tensor  # rate of y in bits, one value per image


class GaussianConditional(tf.Module):
  """Quantized Gaussian with a mean and a scale *index* into a fixed log-spaced scale table.

  Wraps tfc.LocationScaleIndexedEntropyModel. Training uses the indexes continuously; range
  coding needs integer indexes: we round them (tfc itself would truncate towards zero), and the
  estimated rate of ``rate(..., training=False)`` uses the same rounded indexes when
  ``coded_indexes=True`` so that estimate and string length are about the same thing.
  """

  def __init__(self, num_scales=64, scale_min=0.11, scale_max=256.):
    super().__init__(name="gaussian_conditional")
    self.num_scales = int(num_scales)
    offset = tf.math.log(float(scale_min))
    factor = (tf.math.log(float(scale_max)) - offset) / (self.num_scales - 1)
    self._scale_fn = lambda i: tf.math.exp(offset + factor * i)
    self._training_model = self._make(compression=False)
    self._coding_model = None

  def _make(self, compression):
    return tfc.LocationScaleIndexedEntropyModel(
        tfc.NoisyNormal, num_scales=self.num_scales, scale_fn=self._scale_fn, coding_rank=3,
        compression=compression)

  def build_coder(self):
    """Builds the range-coding tables (they depend only on the fixed scale table)."""
    if self._coding_model is None:
      self._coding_model = self._make(compression=True)

  @property
  def coder(self):
    if self._coding_model is None:
      raise RuntimeError("range-coding tables are not built: call model.build_coders() "
                         "after training or restoring weights, before compress/decompress")
    return self._coding_model

  def coded_indexes(self, scale_indexes):
    """The integer indexes the range coder uses (rounded, clipped to the table)."""
    return tf.clip_by_value(tf.round(scale_indexes), 0., self.num_scales - 1.)

  def rate(self, y, scale_indexes, loc, training):
    """Bits per image: noisy-y upper bound when training, information content otherwise."""
    if not training:
      scale_indexes = self.coded_indexes(scale_indexes)
    _, bits = self._training_model(y, scale_indexes, loc=loc, training=training)
    return bits

  def quantize(self, y, loc):
    """round(y - loc) + loc with a straight-through gradient: what the decoder reconstructs."""
    return self._training_model.quantize(y, loc=loc)

  def compress(self, y, scale_indexes, loc):
    return self.coder.compress(y, self.coded_indexes(scale_indexes), loc=loc)

  def decompress(self, strings, scale_indexes, loc):
    return self.coder.decompress(strings, self.coded_indexes(scale_indexes), loc=loc)


class EntropyModel(tf.keras.layers.Layer):
  """Base class: codes y given z_hat. See the module docstring for the contract."""

  #: number of strings ``compress`` returns for y (the z string is the model's, not counted here)
  num_strings = 1

  def __init__(self, latent_depth, scale_table, name=None, **kwargs):
    super().__init__(name=name, **kwargs)
    self.latent_depth = int(latent_depth)
    self.gaussian = GaussianConditional(**scale_table)

  def build_coders(self):
    self.gaussian.build_coder()

  def parameter_groups(self):
    """{component name: list of layers}; used by ``cbexp.summary`` for the breakdown.
    Names starting with ``hyper_synthesis`` count as hyper transforms."""
    raise NotImplementedError

  def call(self, y, z_hat, training):
    raise NotImplementedError

  def compress(self, y, z_hat):
    raise NotImplementedError

  def decompress(self, strings, z_hat, y_shape):
    raise NotImplementedError
