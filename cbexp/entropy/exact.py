"""The exact entropy path (``entropy.numerics=exact``): integer versions of every network whose
output decides a coded symbol, so that encoder and decoder compute bit-identical means and scale
indexes on any machine, thread count, oneDNN setting or instruction set, where float32 results
depend on the summation order. What that guarantees is the entropy decoding: every machine
decodes the same symbols (the same quantized latents) from a file. The synthesis transform stays
float, so the reconstructed image may differ by one level in a few pixels between machines.
``exact_networks`` converts a trained model's weights (no calibration data, no training change);
training and the estimated rate stay float.
"""

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

from cbexp.models.precision import MaterializedTransform

NUMERICS = ("float", "exact")
# The integer scheme's version, part of an exact model's fingerprint
# (cbexp.codec.savedmodel.fingerprint), so that files of another scheme are refused. 1: 15-bit
# weights, 32-bit activations on a fixed 2**-10 grid, float64 products; 2: this module's.
EXACT_SCHEME = 2
WEIGHT_BITS = 8  # |w_q| <= 2**7 per output channel (with the sign: 8 bits)
ACT_BITS = 10  # |a| <= 2**10 between layers: 11 bits with the sign
OUT_BITS = 22  # a network's outputs: |a| <= 2**22, exact in float32
FLOAT32_EXACT = 2**24  # float32 holds every integer up to this exactly
# The exponents ``floor_log2`` tells apart: up to float64's largest, so every finite peak gets
# its own (|a| <= 2**bits holds for every finite input); a peak below 2**MIN_EXPONENT is taken
# as 2**MIN_EXPONENT, which keeps steps and values far from float32's subnormals.
MIN_EXPONENT, MAX_EXPONENT = -60, 1023
TANH_RANGE = 16  # the LRP table covers [-16, 16]; 0.5 * tanh(16) rounds to 0.5 at 2**-20
TANH_INDEX_BITS = 10  # table inputs on a 2**-10 grid
TANH_BITS = 20  # table outputs on a 2**-20 grid


class ExactRangeError(ValueError):
  """A layer whose integer accumulations cannot be proven exact in float32."""


def check_numerics(numerics):
  if numerics not in NUMERICS:
    raise ValueError(f"entropy.numerics must be one of {NUMERICS}, got {numerics!r}")
  return numerics


_POWERS = np.ldexp(1.0, np.arange(MIN_EXPONENT, MAX_EXPONENT + 1))


def floor_log2(m):
  """floor(log2(m)) of a float64 scalar m >= 0 (at least MIN_EXPONENT), from comparisons with
  exact powers of two (no logarithm, whose last bit may differ by machine)."""
  count = tf.reduce_sum(tf.cast(m >= tf.constant(_POWERS, tf.float64), tf.int32))
  return tf.maximum(count - 1, 0) + MIN_EXPONENT


def power_of_two(exponent):
  """2**exponent (int32 scalar) in float64, exactly: assembled from the IEEE-754 bits."""
  bits = tf.bitwise.left_shift(tf.cast(exponent + 1023, tf.int64), tf.constant(52, tf.int64))
  return tf.bitcast(bits, tf.float64)


def requantize(u, step, bits):
  """Real values ``u * step`` (u float64, step a float64 power of two) -> (a, new step): integers
  ``|a| <= 2**bits`` (float64) with ``a * new_step`` the values rounded to the new step, chosen
  so that the largest magnitude uses the range. Only exact operations and one elementwise
  rounding: the same integers and step on every machine for the same input."""
  peak = tf.reduce_max(tf.abs(u))
  # 2**e <= peak < 2**(e + 1), so peak * 2**(bits - 1 - e) < 2**bits.
  shift = bits - 1 - floor_log2(peak)
  return tf.round(u * power_of_two(shift)), step * power_of_two(-shift)


def to_fixed(x, bits=ACT_BITS):
  """float -> (integers |a| <= 2**bits as float64, step): the network's input on its grid."""
  return requantize(tf.cast(x, tf.float64), tf.constant(1.0, tf.float64), bits)


def to_float(a, step):
  """Integers and step -> float32 values (exact for |a| <= 2**24 and the steps used here)."""
  return tf.cast(a * step, tf.float32)


def quantize_kernel(kernel):
  """float kernel [..., in, out] -> (integer kernel as float64, per-output-channel exponents s_c,
  with kernel ~ w_q * 2**-s_c and 2**(WEIGHT_BITS - 2) <= max|w_q| <= 2**(WEIGHT_BITS - 1))."""
  kernel = np.asarray(kernel, np.float64)
  out = kernel.shape[-1]
  peak = np.abs(kernel).reshape(-1, out).max(0)
  # frexp and ldexp are exact (a logarithm's last bit may differ by machine, and a peak just below
  # a power of two would then get another exponent). Channels of zeros: any exponent.
  exponent = np.frexp(peak)[1] - 1  # 2**exponent <= peak < 2**(exponent + 1)
  shift = np.where(peak > 0, WEIGHT_BITS - 2 - exponent, 0).astype(np.int32)
  return np.round(np.ldexp(kernel, shift)), shift


def channel_groups(kernels, name):
  """The range proof: contiguous input-channel ranges [(start, stop), ...] over which every
  output channel's ``sum |w_q| * 2**ACT_BITS <= 2**24``, for each of ``kernels`` (integer
  kernels [..., in, out] reading the same input). Partial sums of products of such weights with
  activations |a| <= 2**ACT_BITS then stay within 2**24 in any order: exact in float32.
  Raises ExactRangeError when one input channel alone exceeds it."""
  budget = FLOAT32_EXACT // 2**ACT_BITS
  # [in, out]: per input channel, the largest over the kernels of sum over taps of |w_q|
  per_channel = np.max(
    [np.abs(k).reshape(-1, k.shape[-2], k.shape[-1]).sum(0) for k in kernels], axis=0
  )
  groups, start, total = [], 0, np.zeros(per_channel.shape[1])
  for channel, weights in enumerate(per_channel):
    if weights.max() > budget:
      raise ExactRangeError(
        f"exact numerics: layer {name} cannot be computed exactly in float32: input channel "
        f"{channel} alone sums {weights.max():.0f} |w_q| > 2**24 / 2**{ACT_BITS} (too many "
        f"taps for {WEIGHT_BITS}-bit weights)"
      )
    if (total + weights).max() > budget:
      groups.append((start, channel))
      start, total = channel, np.zeros_like(total)
    total = total + weights
  groups.append((start, per_channel.shape[0]))
  return groups


def _is_relu(activation):
  return activation is tf.nn.relu or activation is tf.keras.activations.relu


def _is_linear(activation):
  return activation is None or activation is tf.keras.activations.linear


def _plain_kernel(layer):
  """The float32 kernel of a SignalConv2D, refusing parameterizations computed by an FFT
  (its last bits may differ between machines, and then a rounded integer weight would)."""
  if not isinstance(layer.kernel_parameter, tf.Variable):
    kind = type(layer.kernel_parameter).__name__
    raise ValueError(
      f"exact numerics: layer {layer.name} has a {kind} kernel (computed, "
      f"machine-dependent); only "
      f"kernel_parameter='variable' layers can be quantized exactly"
    )
  return layer.kernel_parameter.numpy()


class IntegerLayer:
  """One layer on integers: ``apply(a, kernels)`` (float32 in, float32 out: a convolution or a
  matrix product) per input-channel group, the groups' sums added in float64, then the bias on
  the accumulator's grid, the per-channel scale, and ReLU. ``kernels``: integer kernels
  [..., in, out] with the same output-channel scales, all applied to the same input (the
  checkerboard context's two parities)."""

  def __init__(self, name, apply, kernels, shift, bias, relu):
    self.name = name
    self._apply = apply
    self.groups = channel_groups(kernels, name)
    self._kernels = [
      [tf.constant(k[..., start:stop, :], tf.float32) for k in kernels]
      for start, stop in self.groups
    ]
    shift = np.asarray(shift).astype(np.int32)
    self._scale = tf.constant(np.ldexp(1.0, -shift), tf.float64)  # w = w_q * 2**-s_c
    # The bias in the accumulator's units (times 2**s_c), rounded per image to its grid.
    self._bias = tf.constant(
      np.ldexp(np.zeros(len(shift)) if bias is None else np.asarray(bias, np.float64), shift),
      tf.float64,
    )
    self._relu = relu

  def accumulate(self, a):
    """Integers (float64, |a| <= 2**ACT_BITS) -> the exact integer accumulator (float64)."""
    # On the CPU even where a GPU is visible: a GPU library may pick FFT or Winograd algorithms,
    # which are not exact on integers (not verified for cuDNN here).
    with tf.device("/CPU:0"):
      a = tf.cast(a, tf.float32)
      if len(self.groups) == 1:
        return tf.cast(self._apply(a, self._kernels[0]), tf.float64)
      parts = tf.split(a, [stop - start for start, stop in self.groups], axis=-1)
      return tf.add_n(
        [
          tf.cast(self._apply(part, kernels), tf.float64)
          for part, kernels in zip(parts, self._kernels)
        ]
      )

  def finish(self, acc, step, bits=ACT_BITS):
    """Accumulator (input step ``step``) -> (integers |a| <= 2**bits, their step): ``requantize``
    of the layer's output, with the per-channel scales folded into one multiplication."""
    with tf.device("/CPU:0"):
      acc += tf.round(self._bias / step)  # step is a power of two: the division is exact
      axes = list(range(len(acc.shape) - 1))
      if self._relu:  # the largest output after ReLU (>= 0)
        peak = tf.maximum(tf.reduce_max(tf.reduce_max(acc, axes) * self._scale), 0.0)
      else:
        peak = tf.reduce_max(
          tf.maximum(tf.reduce_max(acc, axes), -tf.reduce_min(acc, axes)) * self._scale
        )
      shift = bits - 1 - floor_log2(peak)
      # Powers of two times integers: exact, so the same as scaling first and rounding after.
      a = tf.round(acc * (self._scale * power_of_two(shift)))
      if self._relu:
        a = tf.nn.relu(a)
      return a, step * power_of_two(-shift)

  def __call__(self, a, step, bits=ACT_BITS):
    return self.finish(self.accumulate(a), step, bits)


def _run(layers, x):
  """float input -> float32 output of a chain of IntegerLayers (last one at OUT_BITS)."""
  a, step = to_fixed(x)
  for i, layer in enumerate(layers):
    a, step = layer(a, step, OUT_BITS if i == len(layers) - 1 else ACT_BITS)
  return a, step


class ExactTransform:
  """Integer version of a Sequential of tfc.SignalConv2D layers (the hyper-synthesis and the
  slice transforms: transposed upsampling or stride-1 convolutions, ReLU or no activation),
  with tfc's "same_zeros" geometry (``cbexp.models.precision.MaterializedTransform``). Called on
  float32 real values, returns float32 values on a power-of-two grid (``OUT_BITS``)."""

  def __init__(self, transform):
    self.name = transform.name
    self.layers = []
    for layer in transform.layers:
      if not isinstance(layer, tfc.SignalConv2D):
        raise ValueError(f"exact numerics: {transform.name}: unsupported layer {layer.name}")
      _plain_kernel(layer)
      spec = MaterializedTransform._materialize_conv(layer, tf.float64)  # geometry, flip
      relu = _is_relu(spec["activation"])
      if not relu and not _is_linear(spec["activation"]):
        raise ValueError(
          f"exact numerics: {transform.name}/{layer.name}: only ReLU or no activation"
        )
      kernel, shift = quantize_kernel(spec["kernel"].numpy())
      if spec["up"]:
        apply = lambda a, k, layer=layer: MaterializedTransform._transpose_conv(layer, a, k[0])
      elif all(s == 1 for s in layer.strides_down):
        # stride 1, odd kernel: "same_zeros" is SAME padding (no separate pad op)
        apply = lambda a, k: tf.nn.conv2d(a, k[0], 1, "SAME")
      else:
        apply = lambda a, k, layer=layer: MaterializedTransform._correlate_down(layer, a, k[0])
      bias = spec["bias"].numpy() if spec["bias"] is not None else None
      self.layers.append(
        IntegerLayer(f"{transform.name}/{layer.name}", apply, [kernel], shift, bias, relu)
      )

  def fixed(self, x):
    """-> (integers |a| <= 2**OUT_BITS as float64, step)."""
    return _run(self.layers, x)

  def __call__(self, x):
    return to_float(*self.fixed(x))


class ExactMaskedConv:
  """Integer version of the checkerboard context (``cbexp.entropy.layers.CheckerboardContext``,
  a masked "same" 5x5 correlation, linear). Calling it uses the coded-positions
  formulation (the 12 unmasked taps gathered into two 3x3 x 2 kernels over the packed anchors):
  on integers it gives exactly the full-grid masked convolution's values (tested), with 2.8x
  fewer multiply-adds."""

  def __init__(self, layer):
    from cbexp.entropy.layers import non_anchor_taps

    if not _is_linear(layer.activation) or tuple(layer.strides) != (1, 1):
      raise ValueError(f"exact numerics: {layer.name}: only a linear stride-1 masked conv")
    k_q, shift = quantize_kernel((layer.kernel * layer.mask).numpy())
    bias = layer.bias.numpy() if layer.use_bias else None
    self._full = IntegerLayer(
      f"{layer.name}/full_grid",
      lambda a, k: tf.nn.conv2d(a, k[0], 1, "SAME"),
      [k_q],
      shift,
      bias,
      relu=False,
    )
    c_in, c_out = k_q.shape[2:]
    flat = k_q.reshape([25, c_in, c_out])
    flat = np.concatenate([flat, np.zeros_like(flat[:1])])  # index 25: no tap
    # [3, 3, 2 * c_in, c_out]: input channels ordered (grid, channel), as the stacked grids are
    parity_kernels = [flat[non_anchor_taps(p)].reshape([3, 3, 2 * c_in, c_out]) for p in (0, 1)]
    self._coded = IntegerLayer(
      layer.name,
      lambda a, k: tf.concat(
        [tf.nn.conv2d(a, k[0], 1, "SAME"), tf.nn.conv2d(a, k[1], 1, "SAME")], axis=2
      ),
      parity_kernels,
      shift,
      bias,
      relu=False,
    )

  def __call__(self, anchors):
    """Packed anchors -> the context at the non-anchors, packed like ``split_checkerboard``
    (the interface of CheckerboardContext)."""
    a, step = to_fixed(anchors)
    grids = tf.concat(tf.split(a, 2, axis=2), axis=-1)  # [p01 | p10] stacked
    return to_float(*self._coded(grids, step, OUT_BITS))

  def full_grid(self, anchors):
    """The same values from the masked convolution over the whole (zero-filled) grid."""
    from cbexp.entropy.layers import merge_checkerboard, split_checkerboard

    a, step = to_fixed(anchors)
    acc = self._full.accumulate(merge_checkerboard(a, tf.zeros_like(a)))
    return to_float(*self._full.finish(split_checkerboard(acc)[1], step, OUT_BITS))


def _dense(a, kernels):
  """[..., in] x [in, out] (float32 integers, a matrix product)."""
  shape = tf.shape(a)
  flat = tf.reshape(a, [-1, shape[-1]])
  return tf.reshape(tf.matmul(flat, kernels[0]), tf.concat([shape[:-1], [-1]], 0))


class ExactEntropyParameters:
  """Integer version of ``cbexp.entropy.layers.EntropyParameters``. The first layer's hyper and
  context parts are one dense layer on the concatenation (as in the float model): one set of
  output-channel scales, and one step for both inputs; without context (anchors, the
  hyperprior) only its hyper rows."""

  def __init__(self, ep):
    first = [ep.from_hyper.kernel.numpy()]
    if ep.from_context is not None:
      first.append(ep.from_context.kernel.numpy())
    kernel, shift = quantize_kernel(np.concatenate(first, axis=0))
    bias = ep.from_hyper.bias.numpy()
    name = f"{ep.name}/layer_0"
    hyper_rows = first[0].shape[0]
    self._first_hyper = IntegerLayer(name, _dense, [kernel[:hyper_rows]], shift, bias, True)
    self._first_both = (
      IntegerLayer(name, _dense, [kernel], shift, bias, True) if len(first) > 1 else None
    )
    self._rest = []
    for layer in ep.hidden + [ep.out]:
      relu = _is_relu(layer.activation)
      if not relu and not _is_linear(layer.activation):
        raise ValueError(f"exact numerics: {ep.name}/{layer.name}: only ReLU or no activation")
      kernel, shift = quantize_kernel(layer.kernel.numpy())
      self._rest.append(
        IntegerLayer(f"{ep.name}/{layer.name}", _dense, [kernel], shift, layer.bias.numpy(), relu)
      )

  def __call__(self, hyper, context=None):
    if context is None:
      first, x = self._first_hyper, hyper
    else:
      first, x = self._first_both, tf.concat([hyper, context], axis=-1)
    a, step = _run([first] + self._rest, x)
    mean, scale_index = tf.split(to_float(a, step), 2, axis=-1)
    return mean, scale_index


def tanh_table():
  """0.5 * tanh(x) for x = k * 2**-TANH_INDEX_BITS, |x| <= TANH_RANGE, rounded to 2**-TANH_BITS,
  as float32. Raises if an entry lies within 1e-9 (in output steps) of a rounding boundary:
  then another libm's tanh could round it the other way."""
  k = np.arange(-TANH_RANGE * 2**TANH_INDEX_BITS, TANH_RANGE * 2**TANH_INDEX_BITS + 1)
  scaled = 0.5 * np.tanh(k * 2.0**-TANH_INDEX_BITS) * 2.0**TANH_BITS
  distance = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5)
  if distance.min() < 1e-9:
    raise RuntimeError(
      f"exact numerics: the tanh table has an entry within 1e-9 of a rounding "
      f"boundary (x = {k[np.argmin(distance)] * 2.0**-TANH_INDEX_BITS})"
    )
  return (np.round(scaled) * 2.0**-TANH_BITS).astype(np.float32)


class ExactResidual:
  """0.5 * tanh(lrp(x)) of the ChARM-style models, exactly: the integer LRP and a table."""

  def __init__(self, lrp, table):
    self._lrp = ExactTransform(lrp)
    self._table = table

  def __call__(self, x):
    a, step = self._lrp.fixed(x)
    limit = TANH_RANGE * 2**TANH_INDEX_BITS
    # The LRP's value on the table's grid: a power-of-two scaling and one rounding (exact ops).
    k = tf.clip_by_value(tf.round(a * step * 2.0**TANH_INDEX_BITS), -limit, limit)
    return tf.gather(self._table, tf.cast(k, tf.int32) + limit)


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
  """-> ExactNetworks for one of cbexp's entropy models (built from its current weights).

  How the integer networks compute:

  * Weights are quantized per output channel c to integers ``|w_q| <= 2**(WEIGHT_BITS - 1)`` with
    a power-of-two scale ``2**-s_c``.
  * Activations are integers ``|a| <= 2**ACT_BITS`` times one power-of-two step per tensor. The
    step is chosen per image and layer from the tensor's own largest magnitude (``requantize``):
    a maximum of integers and comparisons with powers of two, exact operations, so encoder and
    decoder choose the same step from the same integers. Every tensor uses its full range, with
    no calibration set and no clamp.
  * Convolutions and dense layers run in **float32** on these integers. float32 holds every
    integer up to 2**24 exactly, so a sum of integer products is exact, in any order, as long as
    every partial sum stays within 2**24. The proof is made once per layer, when the network is
    built (``channel_groups``): the input channels are split into contiguous groups with
    ``sum |w_q| * 2**ACT_BITS <= 2**24`` over each group's taps, for every output channel. Each
    group is one float32 convolution (exact, whatever order, threads, blocking or vector width
    the library uses); the group sums are added in float64 (exact). A layer whose single input
    channel already breaks the bound raises ``ExactRangeError``. (Algorithms that transform the
    operands with non-integer constants, Winograd or FFT convolutions, would not be exact; the
    CPU libraries TensorFlow uses compute direct or GEMM convolutions, and the integer ops are
    pinned to the CPU.)
  * The bias is put on the accumulator's grid per image (a power-of-two scaling and a rounding,
    elementwise in float64: the same on every IEEE machine); requantization to the next layer's
    step is a power-of-two scaling and a rounding (half to even); ReLU is exact.
  * A network's outputs (means, scale indexes, the LRP) are requantized to ``OUT_BITS`` and
    returned as float32 (exact: ``2**OUT_BITS < 2**24``).
  * ChARM-style models feed the LRP's ``0.5 * tanh`` into the next slices: it is looked up in a
    table over ``2**-TANH_INDEX_BITS`` steps, computed once in float64 and rounded to
    ``2**-TANH_BITS``; ``tanh_table`` checks that no entry lies within 1e-9 (of an output step)
    of a rounding boundary, so every machine's libm builds the same table.

  Only compress/decompress use them (``EntropyModel.coding_networks``). They are snapshots of
  the weights: plain objects (no checkpoint dependencies), rebuilt by ``build_coders``.
  """
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
