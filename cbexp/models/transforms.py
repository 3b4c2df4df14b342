"""The ms2020 transforms (Minnen & Singh, ICIP 2020), shared by every entropy model, and their
multiply-accumulate count (``transform_macs``).

Layer lists are written out as in tensorflow-compression's ``models/ms2020.py``; only the widths
come from config (``conf/transform/*.yaml``) so that tests can build tiny models.
"""

import functools
import math

import tensorflow as tf
import tensorflow_compression as tfc


class AnalysisTransform(tf.keras.Sequential):
  """g_a: image (0..255) -> latent y, downsampling by 16."""

  def __init__(self, num_filters, latent_depth):
    super().__init__(name="analysis")
    # Default kernel parameter (RDFT): it is part of the published parameter count.
    conv = functools.partial(
      tfc.SignalConv2D, corr=True, strides_down=2, padding="same_zeros", use_bias=True
    )
    self.add(tf.keras.layers.Lambda(lambda x: x / 255.0))
    self.add(conv(num_filters, (5, 5), name="layer_0", activation=tfc.GDN(name="gdn_0")))
    self.add(conv(num_filters, (5, 5), name="layer_1", activation=tfc.GDN(name="gdn_1")))
    self.add(conv(num_filters, (5, 5), name="layer_2", activation=tfc.GDN(name="gdn_2")))
    self.add(conv(latent_depth, (5, 5), name="layer_3", activation=None))


class SynthesisTransform(tf.keras.Sequential):
  """g_s: decoded latent y_hat -> image (0..255, not clipped), upsampling by 16."""

  def __init__(self, num_filters):
    super().__init__(name="synthesis")
    conv = functools.partial(
      tfc.SignalConv2D, corr=False, strides_up=2, padding="same_zeros", use_bias=True
    )
    self.add(
      conv(num_filters, (5, 5), name="layer_0", activation=tfc.GDN(name="igdn_0", inverse=True))
    )
    self.add(
      conv(num_filters, (5, 5), name="layer_1", activation=tfc.GDN(name="igdn_1", inverse=True))
    )
    self.add(
      conv(num_filters, (5, 5), name="layer_2", activation=tfc.GDN(name="igdn_2", inverse=True))
    )
    self.add(conv(3, (5, 5), name="layer_3", activation=None))
    self.add(tf.keras.layers.Lambda(lambda x: x * 255.0))


class HyperAnalysisTransform(tf.keras.Sequential):
  """h_a: y -> z, downsampling by another 4."""

  def __init__(self, filters, hyperprior_depth):
    super().__init__(name="hyper_analysis")
    conv = functools.partial(tfc.SignalConv2D, corr=True, padding="same_zeros")
    self.add(
      conv(filters[0], (3, 3), name="layer_0", strides_down=1, use_bias=True, activation=tf.nn.relu)
    )
    self.add(
      conv(filters[1], (5, 5), name="layer_1", strides_down=2, use_bias=True, activation=tf.nn.relu)
    )
    self.add(
      conv(
        hyperprior_depth, (5, 5), name="layer_2", strides_down=2, use_bias=False, activation=None
      )
    )


class HyperSynthesisTransform(tf.keras.Sequential):
  """h_s: z_hat -> hyper features at the latent resolution (latent_depth channels).

  The last ReLU is intended: the output is a feature map that the entropy model's own networks
  turn into means and scales, not the means and scales themselves.
  """

  def __init__(self, filters, latent_depth, name="hyper_synthesis"):
    super().__init__(name=name)
    conv = functools.partial(
      tfc.SignalConv2D, corr=False, padding="same_zeros", use_bias=True, kernel_parameter="variable"
    )
    self.add(conv(filters[0], (5, 5), name="layer_0", strides_up=2, activation=tf.nn.relu))
    self.add(conv(filters[1], (5, 5), name="layer_1", strides_up=2, activation=tf.nn.relu))
    self.add(conv(latent_depth, (3, 3), name="layer_2", strides_up=1, activation=tf.nn.relu))


class SliceTransform(tf.keras.Sequential):
  """ms2020's slice transform: the network shape used for ChARM's mean, scale and LRP predictors
  and for the checkerboard model's LRP (stride 1, so the output has the input's resolution)."""

  def __init__(self, hidden_filters, out_channels, name="slice_transform"):
    super().__init__(name=name)
    conv = functools.partial(
      tfc.SignalConv2D,
      corr=False,
      strides_up=1,
      padding="same_zeros",
      use_bias=True,
      kernel_parameter="variable",
    )
    self.add(conv(hidden_filters[0], (5, 5), name="layer_0", activation=tf.nn.relu))
    self.add(conv(hidden_filters[1], (5, 5), name="layer_1", activation=tf.nn.relu))
    self.add(conv(out_channels, (3, 3), name="layer_2", activation=None))


def _signal_conv_macs(layer, height, width):
  """One tfc.SignalConv2D (with its GDN/IGDN) on an h x w input -> (MACs, (out_h, out_w)).

  A correlation (``corr=True``, ``strides_down=s``) computes ``kh * kw * c_in * c_out`` MACs at
  each of its ``ceil(h / s) * ceil(w / s)`` output positions; a transposed convolution
  (``strides_up=s``) spreads each of its ``h * w`` input positions over ``kh * kw`` taps (the
  same as s * s times fewer taps at s * s times more output positions); GDN / IGDN costs
  ``c * c`` per output position (its gamma matrix)."""
  kh, kw, c_in, c_out = (int(d) for d in layer.kernel.shape)
  up, down = layer.strides_up, layer.strides_down
  if layer.corr:
    out_h, out_w = math.ceil(height / down[0]), math.ceil(width / down[1])
    macs = out_h * out_w * kh * kw * c_in * c_out
  else:
    if tuple(down) != (1, 1):
      raise ValueError(f"{layer.name}: transposed convolution with strides_down {down}")
    out_h, out_w = height * up[0], width * up[1]
    macs = height * width * kh * kw * c_in * c_out
  if isinstance(layer.activation, tfc.GDN):
    macs += out_h * out_w * c_out * c_out
  return macs, (out_h, out_w)


def transform_macs(transform, height, width):
  """Multiply-accumulates of a Sequential of tfc.SignalConv2D layers (Lambda scalings are free,
  so are biases and other activations) on a height x width input."""
  total = 0
  for layer in transform.layers:
    if isinstance(layer, tfc.SignalConv2D):
      macs, (height, width) = _signal_conv_macs(layer, height, width)
      total += macs
  return total
