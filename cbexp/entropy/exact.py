"""The exact entropy path (``entropy.numerics=exact``): integer versions of every network whose
output decides a coded symbol, so that encoder and decoder compute bit-identical means and scale
indexes on any machine, thread count, oneDNN setting or instruction set.

Why: in float32 the entropy parameters depend on the summation order (threads, oneDNN, AVX2 vs
AVX-512, a GPU). One scale index on the other side of an integer or one mean moving a symbol's
rounding desynchronises the range decoder, and the rest of the image is garbage.

How (a post-training conversion, no calibration data, no training change):

* Activations are fixed point with the step ``2**-ACT_FRAC_BITS`` and clamped to
  ``|a_q| <= ACT_BOUND`` (a clamp is deterministic). A network's float32 input is put on that
  grid (round half to even, elementwise: the same on every IEEE machine); its output is
  ``a_q * 2**-ACT_FRAC_BITS``, exact in float32 (|a_q| <= 2**22 < 2**24).
* Weights are quantized per output channel c to integers ``|w_q| < 2**WEIGHT_BITS`` with a
  power-of-two scale ``2**s_c``; the bias to the accumulator's scale ``2**(s_c + ACT_FRAC_BITS)``.
* Convolutions and dense layers run on these integers held in float64. Every product is below
  2**(WEIGHT_BITS + 22) and the range proof, made when the network is built, shows that every
  partial sum stays below 2**53 in *any* order: max_c (sum |w_q| * ACT_BOUND + |b_q|) < 2**53
  (``ExactRangeError`` otherwise). So every summation order, thread split, blocking or vector
  width gives the same exact integer. (Algorithms that transform the operands with non-integer
  constants, Winograd or FFT convolutions, would not; TensorFlow's float64 CPU convolutions are
  Eigen's GEMM contractions.)
* Requantization multiplies by the power of two ``2**-s_c`` (exact) and rounds half to even;
  ReLU and the clamp are exact.
* ChARM-style models feed the LRP's ``0.5 * tanh`` into the next slices: it is looked up in a table
  over the LRP's fixed-point output, computed once in float64 and rounded to ``2**-TANH_BITS``;
  ``tanh_table`` checks that no entry lies within 1e-9 (of an output step) of a rounding boundary,
  so every machine's libm builds the same table.

Training, ``call`` and the estimated rate stay float; only ``compress``/``decompress`` use the
networks built here (``EntropyModel.coding_networks``). They are snapshots of the weights: plain
objects (no checkpoint dependencies), rebuilt by ``build_coders``.
"""
import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

from cbexp.precision import MaterializedTransform

NUMERICS = ("float", "exact")
ACT_FRAC_BITS = 10  # activation step 2**-10
ACT_BOUND = 2 ** 22  # |a_q| <= 2**22: about +-4096 in real units
WEIGHT_BITS = 15  # |w_q| < 2**15 per output channel
EXACT_LIMIT = 2 ** 53  # float64 holds every integer below this exactly
TANH_RANGE = 16  # the LRP table covers [-16, 16]; 0.5 * tanh(16) rounds to 0.5 at 2**-20
TANH_BITS = 20  # table outputs on a 2**-20 grid


class ExactRangeError(ValueError):
  """A layer whose integer accumulations cannot be proven below 2**53."""


def check_numerics(numerics):
  if numerics not in NUMERICS:
    raise ValueError(f"entropy.numerics must be one of {NUMERICS}, got {numerics!r}")
  return numerics


def to_grid(x):
  """float -> fixed-point integers (float64) on the activation grid, clamped."""
  x = tf.cast(x, tf.float64)
  return tf.clip_by_value(tf.round(x * 2. ** ACT_FRAC_BITS), -ACT_BOUND, ACT_BOUND)


def from_grid(a):
  """Fixed-point integers -> float32 real values (exact: |a| <= 2**22)."""
  return tf.cast(a, tf.float32) * 2. ** -ACT_FRAC_BITS


def quantize_layer(kernels, bias, name):
  """Integer weights of one layer. ``kernels``: list of float64 arrays [..., in, out] whose
  products are summed into one accumulator (e.g. g_ep's hyper and context parts), ``bias``:
  [out] or None. -> (integer kernels as float64 arrays, integer bias, shifts s_c as float64
  powers 2**-s_c for requantization). Raises ExactRangeError when the range proof fails."""
  kernels = [np.asarray(k, np.float64) for k in kernels]
  out = kernels[0].shape[-1]
  peak = np.max([np.abs(k).reshape(-1, out).max(0) for k in kernels], axis=0)
  # s_c with 2**(WEIGHT_BITS - 1) <= max|w| * 2**s_c < 2**WEIGHT_BITS (channels of zeros: any s).
  shift = np.where(peak > 0, WEIGHT_BITS - 1 - np.floor(np.log2(np.where(peak > 0, peak, 1.))),
                   WEIGHT_BITS)
  scale = 2. ** shift
  quantized = [np.round(k * scale) for k in kernels]
  b_q = (np.zeros(out) if bias is None
         else np.round(np.asarray(bias, np.float64) * scale * 2. ** ACT_FRAC_BITS))
  total = sum(np.abs(q).reshape(-1, out).sum(0) for q in quantized)
  bound = total * ACT_BOUND + np.abs(b_q)
  peak_w = max(np.abs(q).max() for q in quantized)
  if peak_w >= 2 ** WEIGHT_BITS or bound.max() >= EXACT_LIMIT:
    c = int(np.argmax(bound))
    raise ExactRangeError(
        f"exact numerics: layer {name} cannot be computed exactly in float64: output channel "
        f"{c} may reach {bound[c]:.3g} (sum |w_q| {total[c]:.3g} * {ACT_BOUND} + |b_q| "
        f"{abs(b_q[c]):.3g}) >= 2**53")
  return quantized, b_q, 2. ** -shift


def _is_relu(activation):
  return activation is tf.nn.relu or activation is tf.keras.activations.relu


def _is_linear(activation):
  return activation is None or activation is tf.keras.activations.linear


def _plain_kernel(layer):
  """The float32 kernel of a SignalConv2D, refusing parameterizations computed by an FFT
  (its last bits may differ between machines, and then a rounded integer weight would)."""
  if not isinstance(layer.kernel_parameter, tf.Variable):
    kind = type(layer.kernel_parameter).__name__
    raise ValueError(f"exact numerics: layer {layer.name} has a {kind} kernel (computed, "
                     f"machine-dependent); only "
                     f"kernel_parameter='variable' layers can be quantized exactly")
  return layer.kernel_parameter.numpy()


class _IntegerStep:
  """One layer on fixed-point integers: accumulate in float64, requantize, activation, clamp."""

  def __init__(self, apply, kernels, bias, shift, relu):
    self._apply = apply  # (a, kernels) -> accumulator without bias
    self._kernels = [tf.constant(k, tf.float64) for k in kernels]
    self._bias = tf.constant(bias, tf.float64)
    self._shift = tf.constant(shift, tf.float64)
    self._relu = relu

  def __call__(self, *inputs):
    # On the CPU even where a GPU is visible: a GPU library may pick FFT or Winograd algorithms,
    # which are not exact on integers (not verified for cuDNN's float64 convolutions here).
    with tf.device("/CPU:0"):
      acc = self._apply(inputs, self._kernels) + self._bias
      a = tf.round(acc * self._shift)
      if self._relu:
        a = tf.nn.relu(a)
      return tf.clip_by_value(a, -ACT_BOUND, ACT_BOUND)


class ExactTransform:
  """Integer version of a Sequential of tfc.SignalConv2D layers (the hyper-synthesis and the
  slice transforms: transposed upsampling or stride-1 convolutions, ReLU or no activation),
  with tfc's "same_zeros" geometry (``cbexp.precision.MaterializedTransform``). Called on float32
  real values, returns float32 values on the 2**-ACT_FRAC_BITS grid."""

  def __init__(self, transform):
    self.name = transform.name
    self._steps = []
    for layer in transform.layers:
      if not isinstance(layer, tfc.SignalConv2D):
        raise ValueError(f"exact numerics: {transform.name}: unsupported layer {layer.name}")
      _plain_kernel(layer)
      spec = MaterializedTransform._materialize_conv(layer, tf.float64)  # geometry, flip
      relu = _is_relu(spec["activation"])
      if not relu and not _is_linear(spec["activation"]):
        raise ValueError(f"exact numerics: {transform.name}/{layer.name}: only ReLU or no "
                         f"activation")
      bias = spec["bias"].numpy() if spec["bias"] is not None else None
      kernels, b_q, shift = quantize_layer([spec["kernel"].numpy()], bias,
                                           f"{transform.name}/{layer.name}")
      if spec["up"]:
        apply = lambda a, k, layer=layer: MaterializedTransform._transpose_conv(layer, a[0], k[0])
      elif all(s == 1 for s in layer.strides_down):
        # stride 1, odd kernel: "same_zeros" is SAME padding (no separate pad op)
        apply = lambda a, k: tf.nn.conv2d(a[0], k[0], 1, "SAME")
      else:
        apply = lambda a, k, layer=layer: MaterializedTransform._correlate_down(layer, a[0], k[0])
      self._steps.append(_IntegerStep(apply, kernels, b_q, shift, relu))

  def integers(self, x):
    a = to_grid(x)
    for step in self._steps:
      a = step(a)
    return a

  def __call__(self, x):
    return from_grid(self.integers(x))


class ExactMaskedConv:
  """Integer version of the checkerboard context (``cbexp.entropy.layers.CheckerboardContext``,
  a masked "same" 5x5 correlation, linear). Calling it uses the coded-positions
  formulation (the 12 unmasked taps gathered into two 3x3 x 2 kernels over the packed anchors):
  on integers it gives exactly the full-grid masked convolution's values (tested), with 2.8x
  fewer multiply-adds."""

  def __init__(self, layer):
    from cbexp.entropy.layers import _non_anchor_taps
    if not _is_linear(layer.activation) or tuple(layer.strides) != (1, 1):
      raise ValueError(f"exact numerics: {layer.name}: only a linear stride-1 masked conv")
    kernel = (layer.kernel * layer.mask).numpy()
    bias = layer.bias.numpy() if layer.use_bias else None
    (k_q,), b_q, shift = quantize_layer([kernel], bias, layer.name)
    self._full = _IntegerStep(lambda a, k: tf.nn.conv2d(a[0], k[0], 1, "SAME"),
                              [k_q], b_q, shift, relu=False)
    flat = k_q.reshape([25] + list(k_q.shape[2:]))
    flat = np.concatenate([flat, np.zeros_like(flat[:1])])  # index 25: no tap
    c_in, c_out = k_q.shape[2:]
    self._coded = _IntegerStep(
        lambda a, k: tf.concat([tf.nn.conv2d(a[0], k[0], 1, "SAME"),
                                tf.nn.conv2d(a[0], k[1], 1, "SAME")], axis=2),
        [flat[_non_anchor_taps(p)].reshape([3, 3, 2 * c_in, c_out]) for p in (0, 1)],
        b_q, shift, relu=False)

  def __call__(self, anchors):
    """Packed anchors -> the context at the non-anchors, packed like ``split_checkerboard``
    (the interface of CheckerboardContext)."""
    grids = tf.concat(tf.split(to_grid(anchors), 2, axis=2), axis=-1)  # [p01 | p10] stacked
    return from_grid(self._coded(grids))

  def full_grid(self, anchors):
    """The same values from the masked convolution over the whole (zero-filled) grid."""
    from cbexp.entropy.layers import merge_checkerboard, split_checkerboard
    a = to_grid(anchors)
    return from_grid(split_checkerboard(self._full(merge_checkerboard(a, tf.zeros_like(a))))[1])


def _dense(a, kernel):
  """[..., in] x [in, out] on float64 integers (a matrix product: exact, see module doc)."""
  shape = tf.shape(a)
  flat = tf.reshape(a, [-1, shape[-1]])
  return tf.reshape(tf.matmul(flat, kernel), tf.concat([shape[:-1], [-1]], 0))


class ExactEntropyParameters:
  """Integer version of ``cbexp.entropy.layers.EntropyParameters``: the first layer's hyper and
  context parts share one per-channel scale so that their accumulators add exactly."""

  def __init__(self, ep):
    first = [ep.from_hyper.kernel.numpy()]
    if ep.from_context is not None:
      first.append(ep.from_context.kernel.numpy())
    kernels, b_q, shift = quantize_layer(first, ep.from_hyper.bias.numpy(),
                                         f"{ep.name}/layer_0")

    def first_layer(a, k):
      acc = _dense(a[0], k[0])
      if len(a) > 1 and a[1] is not None:
        acc += _dense(a[1], k[1])
      return acc

    self._steps = [_IntegerStep(first_layer, kernels, b_q, shift, relu=True)]
    for layer in ep.hidden + [ep.out]:
      relu = _is_relu(layer.activation)
      if not relu and not _is_linear(layer.activation):
        raise ValueError(f"exact numerics: {ep.name}/{layer.name}: only ReLU or no activation")
      kernels, b_q, shift = quantize_layer([layer.kernel.numpy()], layer.bias.numpy(),
                                           f"{ep.name}/{layer.name}")
      self._steps.append(_IntegerStep(lambda a, k: _dense(a[0], k[0]), kernels, b_q, shift, relu))

  def __call__(self, hyper, context=None):
    a = self._steps[0](to_grid(hyper), None if context is None else to_grid(context))
    for step in self._steps[1:]:
      a = step(a)
    mean, scale_index = tf.split(from_grid(a), 2, axis=-1)
    return mean, scale_index


def tanh_table():
  """0.5 * tanh(x) for x = k * 2**-ACT_FRAC_BITS, |x| <= TANH_RANGE, rounded to 2**-TANH_BITS,
  as float32. Raises if an entry lies within 1e-9 (in output steps) of a rounding boundary:
  then another libm's tanh could round it the other way."""
  k = np.arange(-TANH_RANGE * 2 ** ACT_FRAC_BITS, TANH_RANGE * 2 ** ACT_FRAC_BITS + 1)
  scaled = 0.5 * np.tanh(k * 2. ** -ACT_FRAC_BITS) * 2. ** TANH_BITS
  distance = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5)
  if distance.min() < 1e-9:
    raise RuntimeError(f"exact numerics: the tanh table has an entry within 1e-9 of a rounding "
                       f"boundary (x = {k[np.argmin(distance)] * 2. ** -ACT_FRAC_BITS})")
  return (np.round(scaled) * 2. ** -TANH_BITS).astype(np.float32)


class ExactResidual:
  """0.5 * tanh(lrp(x)) of the ChARM-style models, exactly: the integer LRP and a table."""

  def __init__(self, lrp, table):
    self._lrp = ExactTransform(lrp)
    self._table = table

  def __call__(self, x):
    a = tf.clip_by_value(self._lrp.integers(x), -TANH_RANGE * 2 ** ACT_FRAC_BITS,
                         TANH_RANGE * 2 ** ACT_FRAC_BITS)
    return tf.gather(self._table, tf.cast(a, tf.int32) + TANH_RANGE * 2 ** ACT_FRAC_BITS)


class ExactNetworks:
  """The networks an entropy model's compress/decompress use, with the model's attribute names
  (``hyper_synthesis``, ``entropy_parameters``, ``context_model(s)``, ``cc_mean``...), each
  replaced by its integer version; attributes not listed stay the model's own (float) layers."""

  def __init__(self, model, **networks):
    self._model = model
    self.__dict__.update(networks)

  def __getattr__(self, name):  # anything not replaced (e.g. the LRP outside the loop)
    return getattr(self._model, name)


def exact_networks(model):
  """-> ExactNetworks for one of cbexp's entropy models (built from its current weights)."""
  networks = {}
  for name in ("hyper_synthesis", "hyper_synthesis_scale", "hyper_synthesis_mean"):
    if getattr(model, name, None) is not None:
      networks[name] = ExactTransform(getattr(model, name))
  if getattr(model, "context_model", None) is not None:
    networks["context_model"] = ExactMaskedConv(model.context_model)
  if hasattr(model, "context_models"):
    networks["context_models"] = [ExactMaskedConv(m) for m in model.context_models]
  ep = getattr(model, "entropy_parameters", None)
  if isinstance(ep, list):
    networks["entropy_parameters"] = [ExactEntropyParameters(e) for e in ep]
  elif ep is not None:
    networks["entropy_parameters"] = ExactEntropyParameters(ep)
  for name in ("cc_mean", "cc_scale"):
    if hasattr(model, name):
      networks[name] = [ExactTransform(t) for t in getattr(model, name)]
  if not model.lrp_outside_entropy_loop:  # the LRP conditions later slices
    table = tf.constant(tanh_table())
    networks["slice_residual"] = [ExactResidual(t, table) for t in model.lrp]
  return ExactNetworks(model, **networks)
