"""The ELIC backbone (He, Yang, Peng, Ma, Qin & Wang, CVPR 2022): 5x5 stride-2 convolutions, each
of the first three followed by three residual bottleneck blocks, and attention modules after the
second stage and at the output; the synthesis mirrors it. Layer lists as in CompressAI's
``Elic2022Official`` (``compressai/models/sensetime.py``) and JiangWeibeta/ELIC's
``AnalysisTransformEX``. ELIC's uneven channel groups [16, 16, 32, 64, M - 128] are an option of
the entropy models (``charm_checkerboard``'s ``slices``), not of the backbone.
"""

import tensorflow as tf

from cbexp.models.transforms.layers import AttentionBlock, ResidualUnit, conv, deconv


def bottlenecks(stage, channels):
  """Three residual bottleneck blocks (1x1 c -> c/2, ReLU, 3x3, ReLU, 1x1 c/2 -> c, + identity)."""
  return [ResidualUnit(channels, name=f"bottleneck_{stage}_{i}") for i in range(3)]


class AnalysisTransform(tf.keras.Sequential):
  """g_a: image (0..255) -> latent y, downsampling by 16."""

  def __init__(self, num_filters, latent_depth):
    super().__init__(name="analysis")
    n = num_filters
    self.add(tf.keras.layers.Lambda(lambda x: x / 255.0))
    self.add(conv(n, 5, stride=2, name="layer_0"))
    for block in bottlenecks(0, n):
      self.add(block)
    self.add(conv(n, 5, stride=2, name="layer_1"))
    for block in bottlenecks(1, n):
      self.add(block)
    self.add(AttentionBlock(n, name="attention_0"))
    self.add(conv(n, 5, stride=2, name="layer_2"))
    for block in bottlenecks(2, n):
      self.add(block)
    self.add(conv(latent_depth, 5, stride=2, name="layer_3"))
    self.add(AttentionBlock(latent_depth, name="attention_1"))


class SynthesisTransform(tf.keras.Sequential):
  """g_s: decoded latent y_hat -> image (0..255, not clipped), upsampling by 16."""

  def __init__(self, num_filters, latent_depth):
    super().__init__(name="synthesis")
    n = num_filters
    self.add(AttentionBlock(latent_depth, name="attention_0"))
    self.add(deconv(n, 5, name="layer_0"))
    for block in bottlenecks(0, n):
      self.add(block)
    self.add(deconv(n, 5, name="layer_1"))
    self.add(AttentionBlock(n, name="attention_1"))
    for block in bottlenecks(1, n):
      self.add(block)
    self.add(deconv(n, 5, name="layer_2"))
    for block in bottlenecks(2, n):
      self.add(block)
    self.add(deconv(3, 5, name="layer_3"))
    self.add(tf.keras.layers.Lambda(lambda x: x * 255.0))
