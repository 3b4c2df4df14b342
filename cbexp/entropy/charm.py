"""Channel-wise autoregressive entropy model, ChARM (Minnen & Singh, ICIP 2020), as in
tensorflow-compression's ``models/ms2020.py``; ``ChannelSlices`` holds what ChARM and
charm_checkerboard share.
"""

import tensorflow as tf

from cbexp.entropy.base import EntropyModel, LatentOutput, SharedConstructor, call_stage
from cbexp.models import tiling
from cbexp.models.transforms.layers import HyperSynthesisTransform, SliceTransform, transform_macs


class ChannelSlices(SharedConstructor):
  """Mixin (before ``EntropyModel`` in the bases) for the channel-slice entropy models (ChARM,
  charm_checkerboard). The model's ``_make_layers`` creates its hyper-synthesis paths with
  ``_make_hyper_paths`` (before its per-slice layers, to keep the weights' order) and its
  per-slice ``cc_mean``, ``cc_scale`` and ``lrp`` lists, and sets ``num_slices`` and
  ``max_support_slices``; its ``_split`` gives y's slices."""

  def _make_hyper_paths(self, hyper_synthesis_filters, latent_depth):
    self.hyper_synthesis_mean = HyperSynthesisTransform(
      hyper_synthesis_filters, latent_depth, name="hyper_synthesis_mean"
    )
    self.hyper_synthesis_scale = HyperSynthesisTransform(
      hyper_synthesis_filters, latent_depth, name="hyper_synthesis_scale"
    )

  # ``nets``: the networks computing the entropy parameters, the model itself (training,
  # float numerics) or ``coding_networks()`` (compress/decompress: float or exact numerics).
  def _hyper_features(self, z_hat, nets=None):
    # The coding paths (``nets`` given) run the hyper-synthesis by tiles when banded.
    synthesize = self.hyper_synthesis_tiled if nets else (lambda path, z: path(z))
    nets = nets or self
    return (
      synthesize(nets.hyper_synthesis_mean, z_hat),
      synthesize(nets.hyper_synthesis_scale, z_hat),
    )

  def _support(self, decoded):
    # Slice i sees the *first* min(i, max_support_slices) slices, not the latest ones.
    return decoded if self.max_support_slices < 0 else decoded[: self.max_support_slices]

  def _slice_inputs(self, i, hyper_means, hyper_scales, decoded, nets=None):
    """-> (cc_mean_i(mean support), cc_scale_i(scale support), mean support) of slice i, the
    supports being each hyper path with the support slices: ChARM's mean and scale index and
    the LRP's input; charm_checkerboard's features. The mean support is the list of its parts
    (``_with_residual`` joins them), so that the coding paths (``nets`` given), over row bands
    when ``band_positions`` says so, never join them over the whole latent."""
    coding = nets is not None
    nets = nets or self
    support = self._support(decoded)
    inputs = [hyper_means, hyper_scales, *support]
    features = self._slice_features(i, nets)
    if coding:
      depth = self._slice_depth(i)
      mean, scale = self.banded(features, inputs, self._slice_halo(i), (depth, depth))
    else:
      mean, scale = features(*inputs)
    return mean, scale, [hyper_means, *support]

  def _slice_features(self, i, nets):
    """(hyper_means, hyper_scales, *support slices) -> (cc_mean_i, cc_scale_i) of them."""

    def features(hyper_means, hyper_scales, *support):
      return (
        nets.cc_mean[i](tf.concat([hyper_means, *support], axis=-1)),
        nets.cc_scale[i](tf.concat([hyper_scales, *support], axis=-1)),
      )

    return features

  def _slice_halo(self, i):
    return max(tiling.halo_latents(self.cc_mean[i]), tiling.halo_latents(self.cc_scale[i]))

  def _slice_depth(self, i):
    return int(self.cc_mean[i].layers[-1].filters)

  @property
  def slice_residual(self):
    """Per slice: x -> 0.5 * tanh(lrp_i(x)) (the exact networks use a table for tanh)."""
    return [lambda x, lrp=lrp: 0.5 * tf.math.tanh(lrp(x)) for lrp in self.lrp]

  def _residual_fn(self, i, nets):
    """(*mean support parts, y_hat_slice) -> y_hat_slice + LRP_i of them all."""

    def with_residual(*parts):
      return (parts[-1] + nets.slice_residual[i](tf.concat(parts, axis=-1)),)

    return with_residual

  def _with_residual(self, i, mean_support, y_hat_slice, nets=None):
    """y_hat_slice + LRP_i(concat[mean support's parts, y_hat_slice]); over row bands in the
    coding paths (``nets`` given)."""
    coding = nets is not None
    with_residual = self._residual_fn(i, nets or self)
    inputs = [*mean_support, y_hat_slice]
    if not coding:
      return with_residual(*inputs)[0]
    halo = tiling.halo_latents(self.lrp[i])
    return self.banded(with_residual, inputs, halo, (self._slice_depth(i),))[0]

  def _slice_loop(self, z_hat, code_slice, nets=None, stage=call_stage):
    """The loop over the slices, in order, of training, compress and the decoder (with
    ``decode_stages``' ``stage``): ``code_slice(i, *inputs)``, ``inputs`` being
    ``_slice_inputs`` of slice i (from the slices decoded before it), returns the slice's y_hat,
    LRP included. -> y_hat."""
    hyper_means, hyper_scales = stage(
      "hyper_synthesis", lambda z: self._hyper_features(z, nets), z_hat
    )
    decoded = []
    for i in range(self.num_slices):
      inputs = stage(
        "entropy_parameters",
        lambda hm, hs, dec, i=i: self._slice_inputs(i, hm, hs, dec, nets),
        hyper_means,
        hyper_scales,
        list(decoded),
      )
      decoded.append(code_slice(i, *inputs))
    return tf.concat(decoded, axis=-1)

  def _shared_macs(self, latent_hw, z_hw):
    """{stage: MACs} of the hyper paths, and of the per-slice transforms ``cc_mean``,
    ``cc_scale`` (entropy parameters) and ``lrp``."""
    hyper = sum(
      transform_macs(path, *z_hw)
      for path in (self.hyper_synthesis_mean, self.hyper_synthesis_scale)
    )
    slices = sum(transform_macs(t, *latent_hw) for t in self.cc_mean + self.cc_scale)
    lrp = sum(transform_macs(t, *latent_hw) for t in self.lrp)
    return {"hyper_synthesis": hyper, "entropy_parameters": slices, "lrp": lrp}


class CharmEntropyModel(ChannelSlices, EntropyModel):
  """y is split into ``num_slices`` slices along channels. Slice i is conditioned on the hyper
  features and on the first min(i, max_support_slices) decoded slices:
    mean  = cc_mean_i(concat[hyper_means, support])
    index = cc_scale_i(concat[hyper_scales, support])      (a scale *index*, not a scale)
    y_hat_i = round(y_i - mean) + mean + 0.5 * tanh(lrp_i(concat[hyper_means, support, y_hat_i]))
  One string per slice, decoded slice by slice.

  ``ChannelSlices`` holds what ChARM and charm_checkerboard share: the two hyper-synthesis paths,
  the channel context's inputs (hyper features + support slices) and the LRP.
  """

  default_name = "charm"

  def _make_layers(
    self, hyper_synthesis_filters, scale_table, hidden_filters, num_slices=10, max_support_slices=5
  ):
    latent_depth = self.latent_depth
    if latent_depth % num_slices:
      raise ValueError(
        f"charm: num_slices={num_slices} does not divide latent_depth={latent_depth}"
      )
    self.num_slices = int(num_slices)
    self.num_strings = self.num_slices
    self.max_support_slices = int(max_support_slices)
    slice_depth = latent_depth // num_slices
    self._make_hyper_paths(hyper_synthesis_filters, latent_depth)
    self.cc_mean = [
      SliceTransform(hidden_filters, slice_depth, name=f"cc_mean_{i}") for i in range(num_slices)
    ]
    self.cc_scale = [
      SliceTransform(hidden_filters, slice_depth, name=f"cc_scale_{i}") for i in range(num_slices)
    ]
    self.lrp = [
      SliceTransform(hidden_filters, slice_depth, name=f"lrp_{i}") for i in range(num_slices)
    ]

  def parameter_groups(self):
    return {
      "hyper_synthesis": [self.hyper_synthesis_mean, self.hyper_synthesis_scale],
      "slice_mean_scale": self.cc_mean + self.cc_scale,
      "lrp": self.lrp,
    }

  def _split(self, y):
    return tf.split(y, self.num_slices, axis=-1)

  def call(self, y, z_hat, training):
    y_slices, bits = self._split(y), []

    def code_slice(i, mean, scale_index, mean_support):
      bits.append(self.gaussian.rate(y_slices[i], scale_index, mean, training))
      return self._with_residual(i, mean_support, self.gaussian.quantize(y_slices[i], mean))

    y_hat = self._slice_loop(z_hat, code_slice)
    return LatentOutput(y_hat=y_hat, bits=sum(bits))

  def compress(self, y, z_hat):
    nets = self.coding_networks()  # float layers, or their exact integer versions
    y_slices, strings = self._split(y), []

    def code_slice(i, mean, scale_index, mean_support):
      strings.append(self.gaussian.compress(y_slices[i], scale_index, mean))
      return self._with_residual(i, mean_support, tf.round(y_slices[i] - mean) + mean, nets)

    y_hat = self._slice_loop(z_hat, code_slice, nets)
    return strings, y_hat

  def decode_stages(self, strings, z_hat, y_shape, stage):
    nets = self.coding_networks()

    def decode_slice(i, mean, scale_index, mean_support):
      y_hat_slice = stage("range_coding", self.gaussian.decompress, strings[i], scale_index, mean)
      return stage(
        "lrp", lambda s, y: self._with_residual(i, s, y, nets), mean_support, y_hat_slice
      )

    return self._slice_loop(z_hat, decode_slice, nets, stage)

  # --- streamed coding (cbexp.models.streaming): a stream row is a latent row -------------------
  #   hyper (both paths, from z's rows) -> per slice: its entropy parameters from the hyper
  #   features and its support slices (halo: cc_mean/cc_scale's reach), coded -> its LRP (halo:
  #   its reach); each slice's stages lag behind its support's by their halos.
  stream_unit = 1

  def _stream(self, z_hat, width, code_slice, states, finish, latent=None):
    """The stages; ``latent`` (encoding: a ``streaming.Latent``): the hyper stage also gives
    y's rows, which each slice's coding stage reads with the hyper outputs."""
    from cbexp.models.streaming import Output, Plan, Stage, interior

    nets = self.coding_networks()
    min_rows = self.stream_min_rows(width)
    depth = self.latent_depth
    hyper_outputs = (Output(depth, width),) * (3 if latent else 2)  # means, scales[, y]

    def hyper(state, r0, r1, a0):
      paths = (nets.hyper_synthesis_mean, nets.hyper_synthesis_scale)
      rows = tuple(self.hyper_rows(p, z_hat, r0, r1) for p in paths)
      return state, rows + ((latent.rows(r0, r1),) if latent else ())

    stages = [Stage(hyper, hyper_outputs, min_rows=min_rows)]
    residual_stages = []
    for i in range(self.num_slices):
      support = tuple(self._support(residual_stages))
      features, with_residual = self._slice_features(i, nets), self._residual_fn(i, nets)

      def entropy_parameters(state, r0, r1, a0, means, scales, *windows, i=i, features=features):
        y_rows = interior(windows[0], r0, r1, a0) if latent else None
        parts = windows[1:] if latent else windows
        mean, scale_index = (interior(x, r0, r1, a0) for x in features(means, scales, *parts))
        return code_slice(i, state, r0, r1, scale_index, mean, y_rows)

      def residual(state, r0, r1, a0, means, *windows, fn=with_residual):
        parts = windows[2:] if latent else windows[1:]  # after the scales (and y)
        return state, (interior(fn(means, *parts)[0], r0, r1, a0),)

      sliced = (Output(self._slice_depth(i), width),)
      stages.append(
        Stage(entropy_parameters, sliced, (0, *support), self._slice_halo(i), min_rows, states[i])
      )
      stages.append(
        Stage(
          residual,
          sliced,
          (0, *support, len(stages) - 1),
          tiling.halo_latents(self.lrp[i]),
          min_rows,
        )
      )
      residual_stages.append(len(stages) - 1)
    rows = tf.shape(z_hat)[1] * 4  # z rows * 4 latent rows
    return Plan(
      stages,
      rows,
      width,
      1,
      tuple(residual_stages),
      finish,
      self.stream_pace(width, stages),
      min_rows,
    )

  def _coding_stages(self):
    return [1 + 2 * i for i in range(self.num_slices)]

  def encoding_stream(self, latent, z_hat):
    gaussian, slice_depth = self.gaussian, self.latent_depth // self.num_slices

    def code_slice(i, state, r0, r1, scale_index, mean, y_rows):
      y_slice = y_rows[..., i * slice_depth : (i + 1) * slice_depth]
      state, y_hat = gaussian.encode_band(state, y_slice, scale_index, mean)
      return state, (y_hat,)

    def finish(states):
      coded = [gaussian.finish_encoder(states[s]) for s in self._coding_stages()]
      return [string for string, _ in coded], [check for _, check in coded]

    states = [gaussian.encoder_state() for _ in range(self.num_slices)]
    return self._stream(z_hat, latent.width, code_slice, states, finish, latent)

  def decoding_stream(self, strings, z_hat, y_shape):
    gaussian = self.gaussian

    def code_slice(i, state, r0, r1, scale_index, mean, y_rows):
      state, values = gaussian.decode_band(state, scale_index, mean)
      return state, (values,)

    def finish(states):
      stages = self._coding_stages()
      return [gaussian.finish_decoder(states[s], strings[i]) for i, s in enumerate(stages)]

    states = [gaussian.decoder_state(s) for s in strings]
    return self._stream(z_hat, y_shape[1], code_slice, states, finish)

  def decode_macs(self, latent_hw, z_hw):
    return self._shared_macs(latent_hw, z_hw)
