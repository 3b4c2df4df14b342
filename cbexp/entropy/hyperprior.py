"""Mean-scale hyperprior without context (Minnen et al., NeurIPS 2018, "no context"): the baseline.

On the ms2020 transforms with everything else as in the checkerboard model (one hyper-synthesis,
the 1x1 entropy-parameter network, LRP from the hyper features): it is the checkerboard model
with its context removed, so the pair isolates what the spatial context buys.
"""

import tensorflow as tf

from cbexp.entropy.base import EntropyModel, LatentOutput, SharedConstructor
from cbexp.entropy.layers import EntropyParameters
from cbexp.models.transforms.layers import HyperSynthesisTransform, SliceTransform, transform_macs


class MeanScaleHyperprior(SharedConstructor):
  """Mixin (before ``EntropyModel`` in the bases) for the models with one hyper-synthesis, the
  1x1 entropy-parameter network g_ep (``param_widths``: its layers' widths in multiples of
  latent_depth) and an LRP from the hyper features: the hyperprior, and the checkerboard and
  autoregressive models, which add a spatial context between the hyper-synthesis and g_ep
  (``_make_context``; its keyword arguments with a default are their own options)."""

  option_methods = ("_make_layers", "_make_context")
  lrp_outside_entropy_loop = True  # LRP sees the hyper features (and y_hat), nothing sees LRP

  def _make_layers(
    self, hyper_synthesis_filters, scale_table, hidden_filters, param_widths=(3, 2), **context
  ):
    depth = self.latent_depth
    self.hyper_synthesis = HyperSynthesisTransform(hyper_synthesis_filters, depth)
    with_context = self._make_context(hyper_synthesis_filters, scale_table, **context)
    self.entropy_parameters = EntropyParameters(
      [w * depth for w in param_widths], depth, with_context=with_context
    )
    self.lrp = SliceTransform(hidden_filters, depth, name="lrp")

  def _make_context(self, hyper_synthesis_filters, scale_table):
    """Creates what the model adds before g_ep (in the weights' order) -> whether g_ep takes a
    context. The hyperprior adds nothing."""
    return False


class HyperpriorEntropyModel(MeanScaleHyperprior, EntropyModel):
  default_name = "hyperprior"

  def parameter_groups(self):
    return {
      "hyper_synthesis": [self.hyper_synthesis],
      "entropy_parameters": [self.entropy_parameters],
      "lrp": [self.lrp],
    }

  def call(self, y, z_hat, training):
    hyper = self.hyper_synthesis(z_hat)
    mean, scale_index = self.entropy_parameters(hyper)
    bits = self.gaussian.rate(y, scale_index, mean, training)
    y_hat = self.gaussian.quantize(y, mean) + self._residual(hyper)
    return LatentOutput(y_hat=y_hat, bits=bits)

  def compress(self, y, z_hat):
    nets = self.coding_networks()  # float layers, or their exact integer versions
    hyper = nets.hyper_synthesis(z_hat)
    mean, scale_index = nets.entropy_parameters(hyper)
    string = self.gaussian.compress(y, scale_index, mean)
    y_hat = tf.round(y - mean) + mean + self._residual(hyper)
    return [string], y_hat

  def decode_stages(self, strings, z_hat, y_shape, stage):
    nets = self.coding_networks()
    hyper = stage("hyper_synthesis", nets.hyper_synthesis, z_hat)
    mean, scale_index = stage("entropy_parameters", nets.entropy_parameters, hyper)
    y_hat = stage("range_coding", self.gaussian.decompress, strings[0], scale_index, mean)
    return stage("lrp", lambda h, y: y + self._residual(h, decoding=True), hyper, y_hat)

  def decode_macs(self, latent_hw, z_hw):
    positions = latent_hw[0] * latent_hw[1]
    return {
      "hyper_synthesis": transform_macs(self.hyper_synthesis, *z_hw),
      "entropy_parameters": self.entropy_parameters.macs(positions, with_context=False),
      "lrp": transform_macs(self.lrp, *latent_hw),
    }
