"""Mean-scale hyperprior without context (Minnen et al., NeurIPS 2018, "no context"): the baseline.

On the ms2020 transforms with everything else as in the checkerboard model (one hyper-synthesis,
the 1x1 entropy-parameter network, LRP from the hyper features): it is the checkerboard model
with its context removed, so the pair isolates what the spatial context buys.
"""

import tensorflow as tf

from cbexp.entropy.base import EntropyModel, LatentOutput
from cbexp.entropy.layers import EntropyParameters
from cbexp.models.transforms import HyperSynthesisTransform, SliceTransform, transform_macs


class HyperpriorEntropyModel(EntropyModel):
  num_strings = 1
  lrp_outside_entropy_loop = True  # LRP sees the hyper features only

  def __init__(
    self,
    latent_depth,
    hyper_synthesis_filters,
    scale_table,
    hidden_filters=(224, 128),
    param_widths=(3, 2),
    numerics="float",
    name="hyperprior",
  ):
    super().__init__(latent_depth, scale_table, numerics=numerics, name=name)
    self.hyper_synthesis = HyperSynthesisTransform(hyper_synthesis_filters, latent_depth)
    self.entropy_parameters = EntropyParameters(
      [w * latent_depth for w in param_widths], latent_depth, with_context=False
    )
    self.lrp = SliceTransform(hidden_filters, latent_depth, name="lrp")

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
