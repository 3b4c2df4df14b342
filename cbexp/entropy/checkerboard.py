"""Checkerboard context model (He et al., CVPR 2021) on the ms2020 transforms, with LRP: two
passes over the latent grid, anchors first, then the non-anchors with a context from the decoded
anchors.
"""

import tensorflow as tf

from cbexp.entropy.base import EntropyModel, LatentOutput
from cbexp.entropy.hyperprior import MeanScaleHyperprior
from cbexp.entropy.layers import CheckerboardContext, merge_checkerboard, split_checkerboard
from cbexp.models import tiling
from cbexp.models.transforms.layers import HyperSynthesisTransform, transform_macs


class CheckerboardEntropyModel(MeanScaleHyperprior, EntropyModel):
  """Two passes over the latent grid (``cbexp.entropy.layers`` defines the partition):
    pass 1, anchors:     params = g_ep(hyper, context = 0)          -> code the anchors
    pass 2, non-anchors: context = g_cm(decoded anchors only)
                         params = g_ep(hyper, context)              -> code the non-anchors
  then y_hat += 0.5 * tanh(lrp(hyper)). Training mimics this exactly (ELIC's two-step encoding,
  He et al. CVPR 2022 section 6.1): anchors are quantized with their pass-1 means *before* the
  context is computed, so the network never sees a context the decoder cannot reproduce.

  Two like-for-like switches (both off by default: the published 26.4M model) move it towards
  ms2020 one difference at a time, so that a comparison with ChARM can separate context from the
  rest:
    two_hyper_paths: a second hyper-synthesis (as ChARM's mean and scale paths); g_ep sees
                     concat[mean path, scale path], LRP the mean path (ChARM's LRP sees
                     hyper_means).
    lrp_on_y_hat:    LRP conditioned on concat[hyper, y_hat] (before the residual) as in ms2020.
  ``context_positions`` (conf: "coded") computes the context only at the non-anchors
  (``cbexp.entropy.layers.CheckerboardContext``); "full_grid", the default for model directories
  saved before the option, is the masked convolution over the whole grid.
  """

  num_strings = 2  # anchors, non-anchors
  default_name = "checkerboard"

  def _make_context(
    self,
    hyper_synthesis_filters,
    scale_table,
    context_multiplier=2,
    two_hyper_paths=False,
    lrp_on_y_hat=False,
    context_positions="full_grid",
  ):
    self.hyper_synthesis_scale = (
      HyperSynthesisTransform(
        hyper_synthesis_filters, self.latent_depth, name="hyper_synthesis_scale"
      )
      if two_hyper_paths
      else None
    )
    self.lrp_on_y_hat = bool(lrp_on_y_hat)
    self.context_model = CheckerboardContext(
      context_multiplier * self.latent_depth, positions=context_positions, name="context_model"
    )
    return True

  def parameter_groups(self):
    groups = {
      "hyper_synthesis": [self.hyper_synthesis],
      "context_model": [self.context_model],
      "entropy_parameters": [self.entropy_parameters],
      "lrp": [self.lrp],
    }
    if self.hyper_synthesis_scale is not None:
      groups["hyper_synthesis_scale"] = [self.hyper_synthesis_scale]
    return groups

  # ``nets``: the networks computing the entropy parameters, the model itself (training,
  # float numerics) or ``coding_networks()`` (compress/decompress: float or exact numerics).
  def _hyper(self, z_hat, nets=None):
    """-> (features for g_ep, features for LRP): the same tensor unless two_hyper_paths."""
    # The coding paths (``nets`` given) run the hyper-synthesis by tiles when banded.
    synthesize = self.hyper_synthesis_tiled if nets else (lambda path, z: path(z))
    nets = nets or self
    hyper = synthesize(nets.hyper_synthesis, z_hat)
    if self.hyper_synthesis_scale is None:
      return hyper, hyper
    return tf.concat([hyper, synthesize(nets.hyper_synthesis_scale, z_hat)], axis=-1), hyper

  # The two passes, shared by training, compress and decompress so all three compute the
  # entropy parameters with the same ops on the same shapes.
  def _anchor_params(self, hyper_anchors, nets=None):
    return (nets or self).entropy_parameters(hyper_anchors)

  def _non_anchor_params(self, anchors_hat, hyper_non_anchors, nets=None, crop=None):
    """``crop``: the rows of the context that ``hyper_non_anchors`` covers (a stream's band)."""
    nets = nets or self
    context = nets.context_model(anchors_hat)
    if crop is not None:
      context = crop(context)
    return nets.entropy_parameters(hyper_non_anchors, context)

  def _residual(self, hyper, y_hat, decoding=False):
    """LRP from the hyper features, and from y_hat (without residual) if lrp_on_y_hat."""
    lrp_input = tf.concat([hyper, y_hat], axis=-1) if self.lrp_on_y_hat else hyper
    return super()._residual(lrp_input, decoding)

  # The coding paths' networks, over row bands when ``band_positions`` says so (``banded``):
  # g_ep alone needs no context rows, the context one packed row (a 5x5 kernel), the LRP its reach.
  def _coded_anchor_params(self, hyper_a, nets):
    depth = self.latent_depth
    return self.banded(lambda h: self._anchor_params(h, nets), [hyper_a], 0, (depth, depth))

  def _coded_non_anchor_params(self, y_hat_a, hyper_n, nets):
    depth = self.latent_depth
    return self.banded(
      lambda y, h: self._non_anchor_params(y, h, nets),
      [y_hat_a, hyper_n],
      CheckerboardContext.halo_rows,
      (depth, depth),
    )

  def _with_residual(self, hyper_lrp, y_hat_a, y_hat_n, decoding=False):
    def residual(hyper, y_hat):
      return (y_hat + self._residual(hyper, y_hat, decoding),)

    y_hat = merge_checkerboard(y_hat_a, y_hat_n)
    return self.banded(
      residual, [hyper_lrp, y_hat], tiling.halo_latents(self.lrp), (self.latent_depth,)
    )[0]

  def call(self, y, z_hat, training):
    hyper, hyper_lrp = self._hyper(z_hat)
    hyper_a, hyper_n = split_checkerboard(hyper)
    y_a, y_n = split_checkerboard(y)
    mean_a, index_a = self._anchor_params(hyper_a)
    y_hat_a = self.gaussian.quantize(y_a, mean_a)  # step one: anchors quantized first
    mean_n, index_n = self._non_anchor_params(y_hat_a, hyper_n)
    bits = self.gaussian.rate(y_a, index_a, mean_a, training) + self.gaussian.rate(
      y_n, index_n, mean_n, training
    )
    y_hat_n = self.gaussian.quantize(y_n, mean_n)
    y_hat = merge_checkerboard(y_hat_a, y_hat_n)
    y_hat += self._residual(hyper_lrp, y_hat)
    return LatentOutput(y_hat=y_hat, bits=bits)

  def compress(self, y, z_hat):
    nets = self.coding_networks()  # float layers, or their exact integer versions
    hyper, hyper_lrp = self._hyper(z_hat, nets)
    hyper_a, hyper_n = split_checkerboard(hyper)
    y_a, y_n = split_checkerboard(y)
    mean_a, index_a = self._coded_anchor_params(hyper_a, nets)
    string_a = self.gaussian.compress(y_a, index_a, mean_a)
    y_hat_a = tf.round(y_a - mean_a) + mean_a
    mean_n, index_n = self._coded_non_anchor_params(y_hat_a, hyper_n, nets)
    string_n = self.gaussian.compress(y_n, index_n, mean_n)
    y_hat_n = tf.round(y_n - mean_n) + mean_n
    return [string_a, string_n], self._with_residual(hyper_lrp, y_hat_a, y_hat_n)

  def decode_stages(self, strings, z_hat, y_shape, stage):
    nets = self.coding_networks()

    def hyper_paths(z):
      hyper, hyper_lrp = self._hyper(z, nets)
      return split_checkerboard(hyper) + (hyper_lrp,)

    def residual(y_hat_a, y_hat_n, hyper_lrp):
      return self._with_residual(hyper_lrp, y_hat_a, y_hat_n, decoding=True)

    hyper_a, hyper_n, hyper_lrp = stage("hyper_synthesis", hyper_paths, z_hat)
    mean_a, index_a = stage(
      "entropy_parameters", lambda h: self._coded_anchor_params(h, nets), hyper_a
    )
    y_hat_a = stage("range_coding", self.gaussian.decompress, strings[0], index_a, mean_a)
    mean_n, index_n = stage(
      "entropy_parameters",
      lambda y, h: self._coded_non_anchor_params(y, h, nets),
      y_hat_a,
      hyper_n,
    )
    y_hat_n = stage("range_coding", self.gaussian.decompress, strings[1], index_n, mean_n)
    return stage("lrp", residual, y_hat_a, y_hat_n, hyper_lrp)

  # --- streamed coding (cbexp.models.streaming): a stream row is a packed row (2 latent rows) --
  #   hyper (from z's rows) -> anchors (params, code) -> non-anchors (context: 1 packed row of
  #   halo, params, code) -> y_hat (merge, LRP: its reach in halo)
  stream_unit = 2

  def _stream(self, z_hat, width, code_anchors, code_non_anchors, states, finish, latent=None):
    """The stages; ``latent`` (encoding: a ``streaming.Latent``): the hyper stage also gives
    y's rows, which the coding stages read (the anchors' and the non-anchors' halves)."""
    from cbexp.models.streaming import Output, Plan, Stage, interior

    nets, depth = self.coding_networks(), self.latent_depth
    paths = [p for p in (nets.hyper_synthesis, nets.hyper_synthesis_scale) if p is not None]
    min_rows = self.stream_min_rows(width)
    decoding = latent is None

    def hyper(state, r0, r1, a0):
      rows = (tf.concat([self.hyper_rows(p, z_hat, 2 * r0, 2 * r1) for p in paths], -1),)
      return state, rows + ((latent.rows(2 * r0, 2 * r1),) if latent else ())

    def y_half(windows, r0, r1, a0, half):  # this band's anchors or non-anchors of y
      return None if decoding else split_checkerboard(interior(windows[0], r0, r1, a0, 2))[half]

    def anchors(state, r0, r1, a0, hyper, *y):
      mean, index = self._anchor_params(split_checkerboard(hyper)[0], nets)
      return code_anchors(state, r0, r1, index, mean, y_half(y, r0, r1, a0, 0))

    def non_anchors(state, r0, r1, a0, hyper, *windows):  # [y,] y_hat_a
      hyper_n = split_checkerboard(interior(hyper, r0, r1, a0, 2))[1]
      crop = lambda context: interior(context, r0, r1, a0)  # noqa: E731
      mean, index = self._non_anchor_params(windows[-1], hyper_n, nets, crop)
      return code_non_anchors(state, r0, r1, index, mean, y_half(windows, r0, r1, a0, 1))

    def with_residual(state, r0, r1, a0, hyper, *windows):  # [y,] y_hat_a, y_hat_n
      y_hat = merge_checkerboard(windows[-2], windows[-1])
      y_hat += self._residual(hyper[..., :depth], y_hat, decoding)
      return state, (interior(y_hat, r0, r1, a0, 2),)

    packed = (Output(depth, width),)
    hyper_outputs = (Output(depth * len(paths), width, 2),)
    if latent:
      hyper_outputs += (Output(depth, width, 2),)
    stages = [
      Stage(hyper, hyper_outputs, min_rows=min_rows),
      Stage(anchors, packed, (0,), 0, min_rows, states[0]),
      Stage(non_anchors, packed, (0, 1), CheckerboardContext.halo_rows, min_rows, states[1]),
      Stage(
        with_residual,
        (Output(depth, width, 2),),
        (0, 1, 2),
        -(-tiling.halo_latents(self.lrp) // 2),
        min_rows,
      ),
    ]
    rows = tf.shape(z_hat)[1] * 2  # z rows * 4 latent rows / 2
    return Plan(stages, rows, width, 2, (3,), finish, self.stream_pace(width, stages), min_rows)

  def encoding_stream(self, latent, z_hat):
    gaussian = self.gaussian

    def code(state, r0, r1, index, mean, y_part):
      state, y_hat = gaussian.encode_band(state, y_part, index, mean)
      return state, (y_hat,)

    def finish(states):
      coded = [gaussian.finish_encoder(states[s]) for s in (1, 2)]
      return [string for string, _ in coded], [check for _, check in coded]

    states = (gaussian.encoder_state(), gaussian.encoder_state())
    return self._stream(z_hat, latent.width, code, code, states, finish, latent)

  def decoding_stream(self, strings, z_hat, y_shape):
    gaussian = self.gaussian

    def decode(state, r0, r1, index, mean, y_part):
      state, values = gaussian.decode_band(state, index, mean)
      return state, (values,)

    def finish(states):
      return [gaussian.finish_decoder(states[s], strings[s - 1]) for s in (1, 2)]

    states = tuple(gaussian.decoder_state(s) for s in strings)
    return self._stream(z_hat, y_shape[1], decode, decode, states, finish)

  def decode_macs(self, latent_hw, z_hw):
    """g_ep on the anchors (the hyper part only: their context is exactly zero, not computed),
    then on the non-anchors with the context."""
    positions = latent_hw[0] * latent_hw[1]
    paths = [p for p in (self.hyper_synthesis, self.hyper_synthesis_scale) if p is not None]
    ep = self.entropy_parameters
    return {
      "hyper_synthesis": sum(transform_macs(path, *z_hw) for path in paths),
      "context": self.context_model.macs(positions),
      "entropy_parameters": (
        ep.macs(positions // 2, with_context=False) + ep.macs(positions // 2, with_context=True)
      ),
      "lrp": transform_macs(self.lrp, *latent_hw),
    }
