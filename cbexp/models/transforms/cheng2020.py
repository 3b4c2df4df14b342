"""The cheng2020 backbone (Cheng, Sun, Takeuchi & Katto, CVPR 2020): residual blocks with stride
in the analysis, sub-pixel upsampling in the synthesis, and (``attention=True``, cheng2020-attn)
the simplified attention modules. Layer lists as in CompressAI's ``Cheng2020Anchor`` and
``Cheng2020Attention`` (``compressai/models/waseda.py``, ``compressai/layers/layers.py``).
"""

from fractions import Fraction

import tensorflow as tf

from cbexp.models.transforms.layers import (
  AttentionBlock,
  Block,
  Subsample,
  conv,
  gdn,
  layers_macs,
  layers_reach,
  leaky_relu,
)


class ResidualBlockWithStride(Block):
  """3x3 stride 2, LeakyReLU, 3x3, GDN; skip: 1x1 stride 2."""

  def __init__(self, filters, name=None):
    super().__init__(name=name)
    self.sublayers = [
      conv(filters, 3, stride=2, activation=leaky_relu, name="conv_0"),
      conv(filters, 3, name="conv_1"),
      gdn("gdn"),
    ]
    # The 1x1 stride-2 skip as a subsampling and a 1x1 (the same sums): TF 2.14's CPU gradient
    # of a strided 1x1 convolution over few channels corrupts memory (the 3-channel image here).
    self.skip = [Subsample(2), conv(filters, 1, name="skip")]

  def call(self, x):
    out = x
    for layer in self.sublayers:
      out = layer(out)
    return out + self.skip[1](self.skip[0](x))


class ResidualBlock(Block):
  """3x3, LeakyReLU, 3x3, LeakyReLU, plus identity (a 1x1 on the skip where the depth changes)."""

  def __init__(self, in_filters, filters, name=None):
    super().__init__(name=name)
    self.sublayers = [
      conv(filters, 3, activation=leaky_relu, name="conv_0"),
      conv(filters, 3, activation=leaky_relu, name="conv_1"),
    ]
    self.skip = [conv(filters, 1, name="skip")] if in_filters != filters else []

  def call(self, x):
    out = x
    for layer in self.sublayers:
      out = layer(out)
    return out + (self.skip[0](x) if self.skip else x)


class SubpelConv(Block):
  """3x3 convolution to filters * r * r, then a pixel shuffle (depth_to_space) by r."""

  def __init__(self, filters, rate=2, name=None):
    super().__init__(name=name)
    self.rate = rate
    self.conv = conv(filters * rate * rate, 3, name="conv")

  def macs(self, height, width):
    macs, (h, w) = layers_macs([self.conv], height, width)
    return macs, (h * self.rate, w * self.rate)

  def reach(self):
    """The 3x3's radius, then the shuffle: output j reads input floor(j / r), at most
    (r - 1) / r of an input sample from j / r."""
    radius, scale = layers_reach([self.conv])
    return radius + Fraction(self.rate - 1, self.rate) * scale, scale / self.rate

  def call(self, x):
    return tf.nn.depth_to_space(self.conv(x), self.rate)


class ResidualBlockUpsample(Block):
  """Sub-pixel conv (x2), LeakyReLU, 3x3, IGDN; skip: sub-pixel conv (x2)."""

  def __init__(self, filters, name=None):
    super().__init__(name=name)
    self.sublayers = [
      SubpelConv(filters, name="subpel"),
      tf.keras.layers.LeakyReLU(alpha=0.01),
      conv(filters, 3, name="conv"),
      gdn("igdn", inverse=True),
    ]
    self.skip = [SubpelConv(filters, name="skip")]

  def call(self, x):
    out = x
    for layer in self.sublayers:
      out = layer(out)
    return out + self.skip[0](x)


class AnalysisTransform(tf.keras.Sequential):
  """g_a: image (0..255) -> latent y, downsampling by 16."""

  def __init__(self, num_filters, latent_depth, attention=False):
    super().__init__(name="analysis")
    n = num_filters
    self.add(tf.keras.layers.Lambda(lambda x: x / 255.0))
    self.add(ResidualBlockWithStride(n, name="block_0"))
    self.add(ResidualBlock(n, n, name="block_1"))
    self.add(ResidualBlockWithStride(n, name="block_2"))
    if attention:
      self.add(AttentionBlock(n, name="attention_0"))
    self.add(ResidualBlock(n, n, name="block_3"))
    self.add(ResidualBlockWithStride(n, name="block_4"))
    self.add(ResidualBlock(n, n, name="block_5"))
    self.add(conv(latent_depth, 3, stride=2, name="layer_out"))
    if attention:
      self.add(AttentionBlock(latent_depth, name="attention_1"))


class SynthesisTransform(tf.keras.Sequential):
  """g_s: decoded latent y_hat -> image (0..255, not clipped), upsampling by 16."""

  def __init__(self, num_filters, latent_depth, attention=False):
    super().__init__(name="synthesis")
    n = num_filters
    if attention:
      self.add(AttentionBlock(latent_depth, name="attention_0"))
    self.add(ResidualBlock(latent_depth, n, name="block_0"))
    self.add(ResidualBlockUpsample(n, name="block_1"))
    self.add(ResidualBlock(n, n, name="block_2"))
    self.add(ResidualBlockUpsample(n, name="block_3"))
    if attention:
      self.add(AttentionBlock(n, name="attention_1"))
    self.add(ResidualBlock(n, n, name="block_4"))
    self.add(ResidualBlockUpsample(n, name="block_5"))
    self.add(ResidualBlock(n, n, name="block_6"))
    self.add(SubpelConv(3, name="layer_out"))
    self.add(tf.keras.layers.Lambda(lambda x: x * 255.0))
