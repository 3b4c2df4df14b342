"""Channel slices with a checkerboard inside each slice (the spatial-channel context of ELIC,
He et al. CVPR 2022) on the ms2020 transforms: ChARM's slices and slice transforms, plus a
checkerboard pass pair per slice.
"""

import tensorflow as tf

from cbexp.entropy.base import EntropyModel, LatentOutput
from cbexp.entropy.charm import ChannelSlices
from cbexp.entropy.layers import (
  CheckerboardContext,
  EntropyParameters,
  merge_checkerboard,
  split_checkerboard,
)
from cbexp.models.transforms.layers import SliceTransform


def resolve_slices(slices, latent_depth):
  """Slice depths for ``latent_depth``: ``slices`` as given when they sum to it, else scaled by
  latent_depth / sum(slices) (so the paper's [16, 16, 32, 64, 192] gives [2, 2, 4, 8, 24] for
  the tiny transform's 40 channels); an error when that does not give whole channels."""
  slices = [int(s) for s in slices]
  if not slices or min(slices) < 1:
    raise ValueError(f"charm_checkerboard: slices must be positive channel counts, got {slices}")
  total = sum(slices)
  scaled = [s * latent_depth // total for s in slices]
  if any(s * latent_depth % total for s in slices) or min(scaled) < 1:
    raise ValueError(
      f"charm_checkerboard: slices {slices} (sum {total}) cannot be scaled to "
      f"latent_depth={latent_depth} in whole channels; give slices summing to "
      f"{latent_depth}"
    )
  return scaled


class CharmCheckerboardEntropyModel(ChannelSlices, EntropyModel):
  """For slice i (depth d_i; uneven sizes from config, e.g. 16, 16, 32, 64, 192 for M = 320):
    channel context: mean_feat  = cc_mean_i(concat[hyper_means, support])       (d_i channels)
                     scale_feat = cc_scale_i(concat[hyper_scales, support])      (d_i channels)
    pass 1, anchors:     params = g_ep_i(concat[mean_feat, scale_feat], context = 0)
    pass 2, non-anchors: context = g_cm_i(decoded anchors of slice i only)   (5x5 checkerboard mask,
                                   computed at the non-anchors only: ``context_positions``)
                         params = g_ep_i(concat[mean_feat, scale_feat], context)
    y_hat_i = round(y_i - mean) + mean + 0.5 * tanh(lrp_i(concat[hyper_means, support, y_hat_i]))
  ``support`` is the first min(i, max_support_slices) decoded slices (all earlier ones when
  max_support_slices < 0), LRP included, as in ChARM. g_ep_i is 1x1 layers only (the shared
  ``EntropyParameters``); training quantizes each slice's anchors first (ELIC's two-step), exactly
  like the checkerboard model. Two strings per slice: anchors, non-anchors.
  """

  default_name = "charm_checkerboard"

  def _make_layers(
    self,
    hyper_synthesis_filters,
    scale_table,
    hidden_filters,
    slices=(16, 16, 32, 64, 192),
    max_support_slices=-1,
    param_widths=(3, 2),
    context_multiplier=2,
    context_positions="full_grid",
  ):
    self.slices = resolve_slices(slices, self.latent_depth)
    self.num_slices = len(self.slices)
    self.num_strings = 2 * self.num_slices
    self.max_support_slices = int(max_support_slices)
    self._make_hyper_paths(hyper_synthesis_filters, self.latent_depth)
    self.cc_mean, self.cc_scale, self.context_models, self.entropy_parameters, self.lrp = (
      [],
      [],
      [],
      [],
      [],
    )
    for i, depth in enumerate(self.slices):
      self.cc_mean.append(SliceTransform(hidden_filters, depth, name=f"cc_mean_{i}"))
      self.cc_scale.append(SliceTransform(hidden_filters, depth, name=f"cc_scale_{i}"))
      self.context_models.append(
        CheckerboardContext(
          context_multiplier * depth, positions=context_positions, name=f"context_model_{i}"
        )
      )
      self.entropy_parameters.append(
        EntropyParameters(
          [w * depth for w in param_widths],
          depth,
          with_context=True,
          name=f"entropy_parameters_{i}",
        )
      )
      self.lrp.append(SliceTransform(hidden_filters, depth, name=f"lrp_{i}"))

  def parameter_groups(self):
    return {
      "hyper_synthesis": [self.hyper_synthesis_mean, self.hyper_synthesis_scale],
      "slice_mean_scale": self.cc_mean + self.cc_scale,
      "context_model": self.context_models,
      "entropy_parameters": self.entropy_parameters,
      "lrp": self.lrp,
    }

  def _split(self, y):
    return tf.split(y, self.slices, axis=-1)

  # Shared by training, compress and decompress (same ops, same shapes). ``nets``: the model
  # itself (training, float numerics) or ``coding_networks()`` (float or exact numerics).
  def _slice_inputs(self, i, hyper_means, hyper_scales, decoded, nets=None):
    """-> (anchor features, non-anchor features, LRP's mean support) of slice i."""
    mean_feat, scale_feat, mean_support = super()._slice_inputs(
      i, hyper_means, hyper_scales, decoded, nets
    )
    features_a, features_n = split_checkerboard(tf.concat([mean_feat, scale_feat], -1))
    return features_a, features_n, mean_support

  def _non_anchor_params(self, i, anchors_hat, features_n, nets=None):
    nets = nets or self
    return nets.entropy_parameters[i](features_n, nets.context_models[i](anchors_hat))

  def call(self, y, z_hat, training):
    y_slices, bits = self._split(y), []

    def code_slice(i, features_a, features_n, mean_support):
      y_a, y_n = split_checkerboard(y_slices[i])
      mean_a, index_a = self.entropy_parameters[i](features_a)
      y_hat_a = self.gaussian.quantize(y_a, mean_a)  # step one: anchors quantized first
      mean_n, index_n = self._non_anchor_params(i, y_hat_a, features_n)
      bits.append(
        self.gaussian.rate(y_a, index_a, mean_a, training)
        + self.gaussian.rate(y_n, index_n, mean_n, training)
      )
      y_hat_n = self.gaussian.quantize(y_n, mean_n)
      return self._with_residual(i, mean_support, merge_checkerboard(y_hat_a, y_hat_n))

    y_hat = self._slice_loop(z_hat, code_slice)
    return LatentOutput(y_hat=y_hat, bits=sum(bits))

  def _encode(self, y, z_hat, code):
    """compress's loop, with ``code(y_pass, index, mean)`` applied to each pass (anchors, then
    non-anchors, slice by slice). -> (list of code's results, y_hat)."""
    nets = self.coding_networks()  # float layers, or their exact integer versions
    y_slices, coded = self._split(y), []

    def code_slice(i, features_a, features_n, mean_support):
      y_a, y_n = split_checkerboard(y_slices[i])
      mean_a, index_a = nets.entropy_parameters[i](features_a)
      coded.append(code(y_a, index_a, mean_a))
      y_hat_a = tf.round(y_a - mean_a) + mean_a
      mean_n, index_n = self._non_anchor_params(i, y_hat_a, features_n, nets)
      coded.append(code(y_n, index_n, mean_n))
      y_hat_n = tf.round(y_n - mean_n) + mean_n
      return self._with_residual(i, mean_support, merge_checkerboard(y_hat_a, y_hat_n), nets)

    y_hat = self._slice_loop(z_hat, code_slice, nets)
    return coded, y_hat

  def compress(self, y, z_hat):
    return self._encode(y, z_hat, self.gaussian.compress)

  def coding_costs(self, y, z_hat):
    """Diagnostic (eager): ``GaussianConditional.symbol_bits`` of each string's symbols, in
    string order (slice 0 anchors, slice 0 non-anchors, slice 1 anchors, ...), with exactly the
    means and indexes ``compress`` codes them with: the range coder's own table cost next to
    the Gaussian estimate, per string."""
    return self._encode(y, z_hat, self.gaussian.symbol_bits)[0]

  def decode_stages(self, strings, z_hat, y_shape, stage):
    nets = self.coding_networks()

    def decode_slice(i, features_a, features_n, mean_support):
      mean_a, index_a = stage("entropy_parameters", nets.entropy_parameters[i], features_a)
      y_hat_a = stage(
        "range_coding", self.gaussian.decompress, strings[2 * i], index_a, mean_a
      )  # pass 1
      mean_n, index_n = stage(
        "entropy_parameters",
        lambda y_a, f: self._non_anchor_params(i, y_a, f, nets),
        y_hat_a,
        features_n,
      )
      y_hat_n = stage(
        "range_coding", self.gaussian.decompress, strings[2 * i + 1], index_n, mean_n
      )  # pass 2
      return stage(
        "lrp",
        lambda s, y_a, y_n: self._with_residual(i, s, merge_checkerboard(y_a, y_n), nets),
        mean_support,
        y_hat_a,
        y_hat_n,
      )

    return self._slice_loop(z_hat, decode_slice, nets, stage)

  def decode_macs(self, latent_hw, z_hw):
    """Per slice, besides ChARM's transforms: g_ep on the anchors (hyper part only), then on the
    non-anchors with the slice's checkerboard context."""
    macs = self._shared_macs(latent_hw, z_hw)
    positions = latent_hw[0] * latent_hw[1]
    macs["context"] = sum(context.macs(positions) for context in self.context_models)
    macs["entropy_parameters"] += sum(
      ep.macs(positions // 2, with_context=False) + ep.macs(positions // 2, with_context=True)
      for ep in self.entropy_parameters
    )
    return macs
