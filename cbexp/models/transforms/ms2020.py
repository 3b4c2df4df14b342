"""The ms2020 analysis and synthesis (Minnen & Singh, ICIP 2020): four 5x5 stride-2 convolutions
with GDN / IGDN, as in tensorflow-compression's ``models/ms2020.py`` (the layers of Ballé et al.
2018, with tfc's default RDFT kernel parameterization).
"""

import functools

import tensorflow as tf

from cbexp.models.transforms.layers import SignalConv2D, gdn


class AnalysisTransform(tf.keras.Sequential):
  """g_a: image (0..255) -> latent y, downsampling by 16."""

  def __init__(self, num_filters, latent_depth):
    super().__init__(name="analysis")
    # Default kernel parameter (RDFT): it is part of the published parameter count.
    conv = functools.partial(
      SignalConv2D, corr=True, strides_down=2, padding="same_zeros", use_bias=True
    )
    self.add(tf.keras.layers.Lambda(lambda x: x / 255.0))
    self.add(conv(num_filters, (5, 5), name="layer_0", activation=gdn("gdn_0")))
    self.add(conv(num_filters, (5, 5), name="layer_1", activation=gdn("gdn_1")))
    self.add(conv(num_filters, (5, 5), name="layer_2", activation=gdn("gdn_2")))
    self.add(conv(latent_depth, (5, 5), name="layer_3", activation=None))


class SynthesisTransform(tf.keras.Sequential):
  """g_s: decoded latent y_hat -> image (0..255, not clipped), upsampling by 16. (``latent_depth``
  is the input's depth, which the first layer takes from its input.)"""

  def __init__(self, num_filters, latent_depth):
    del latent_depth
    super().__init__(name="synthesis")
    conv = functools.partial(
      SignalConv2D, corr=False, strides_up=2, padding="same_zeros", use_bias=True
    )
    self.add(conv(num_filters, (5, 5), name="layer_0", activation=gdn("igdn_0", inverse=True)))
    self.add(conv(num_filters, (5, 5), name="layer_1", activation=gdn("igdn_1", inverse=True)))
    self.add(conv(num_filters, (5, 5), name="layer_2", activation=gdn("igdn_2", inverse=True)))
    self.add(conv(3, (5, 5), name="layer_3", activation=None))
    self.add(tf.keras.layers.Lambda(lambda x: x * 255.0))
