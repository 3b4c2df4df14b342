"""Precision, in training and in decoding.

Training (``trainer.precision``, ``training_policy``): the transforms g_a, h_a and g_s may
compute in bfloat16 or float16 (Keras's mixed-precision policies: float32 variables, the
compute dtype of the policy; tfc forms the RDFT kernels in float32), while the entropy model
(the hyper-synthesis, the context and every network that decides a mean or a scale, the
likelihoods) stays float32: its tensors are cast at the model's boundaries
(``CompressionModel.call``). The weights are float32 whatever the policy, and the model that
codes is always built in float32: a model trained in mixed precision codes like one trained in
float32.

Decoding: transforms with their kernels computed once (``MaterializedTransform``): the codec's
graphs use them for g_a, h_a and g_s, bit-identical to tfc's layers in float32, which recompute the
RDFT kernel parameterization on every call. The decoder may run g_s (and an LRP outside the
entropy loop) in bfloat16 (``precision="bfloat16"``): the strings do not change, the
reconstruction slightly does; float32 stays the reference.
"""

import contextlib
import uuid

import tensorflow as tf
import tensorflow_compression as tfc
from tensorflow_compression.python.ops import padding_ops

from cbexp.constants import TRAINING_PRECISIONS

PRECISIONS = ("float32", "bfloat16")


# The dynamic loss scale's start: cbexp's loss (bits per pixel + lambda * MSE on the 0..255
# scale) begins in the hundreds, and its gradients with it; from Keras's default (2^15) the
# first 7 steps of a tiny run overflowed and were skipped (tests/training/test_precision.py).
# The scale halves on each overflow and doubles after 2000 good steps, as Keras's.
LOSS_SCALE_START = 2**8


def check_precision(precision):
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
  return precision


def check_training_precision(precision):
  if precision not in TRAINING_PRECISIONS:
    raise ValueError(
      f"trainer.precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {precision!r}"
    )
  return precision


@contextlib.contextmanager
def training_policy(precision="float32"):
  """Layers built inside take the mixed-precision policy ``precision`` (Keras's global policy,
  restored on exit: what is built elsewhere stays float32)."""
  check_training_precision(precision)
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(precision)
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


def optimizer_for(optimizer, precision="float32"):
  """``optimizer``, wrapped in Keras's dynamic loss scaling for mixed_float16 (float16's range
  would flush small gradients to zero; bfloat16 has float32's range and needs none)."""
  if check_training_precision(precision) == "mixed_float16":
    return tf.keras.mixed_precision.LossScaleOptimizer(optimizer, initial_scale=LOSS_SCALE_START)
  return optimizer


def copy_weights(source, target, targets=None):
  """Copies ``source``'s weights into ``target``, a model of the same config built in any
  training precision, through an in-memory checkpoint: matched by the object graph, not by the
  order of ``variables``, which a mixed-precision policy changes. ``targets``: the target's
  weights (default: all its variables; the RD probe's copy also holds coding tables), checked
  afterwards to hold the source's values, float32."""
  prefix = f"ram://cbexp-weights/{uuid.uuid4().hex}/model"
  path = tf.train.Checkpoint(model=source).write(prefix)
  try:
    tf.train.Checkpoint(model=target).read(path).expect_partial()
  finally:
    for name in tf.io.gfile.glob(prefix + "*"):
      tf.io.gfile.remove(name)

  def summary(variables):
    return sorted(
      (v.name, tuple(v.shape), float(tf.reduce_sum(tf.cast(v.read_value(), tf.float64))))
      for v in variables
    )

  if summary(source.variables) != summary(target.variables if targets is None else targets):
    raise RuntimeError("copying the weights left the target with other values than the source's")


def coding_transform(transform, precision="float32"):
  """The transform the codec's graphs run: a ``MaterializedTransform`` where the transform is a
  Sequential of tfc.SignalConv2D layers and Lambda scalings (ms2020, mbt2018, the hyper
  transforms), else the transform itself (the residual backbones, whose plain kernel variables
  need no per-call computation), which decodes in float32 only."""
  supported = all(
    isinstance(layer, (tfc.SignalConv2D, tf.keras.layers.Lambda)) for layer in transform.layers
  )
  if supported:
    return MaterializedTransform(transform, precision)
  if check_precision(precision) != "float32":
    raise ValueError(
      f"decode precision {precision}: available for the ms2020 and mbt2018 backbones only "
      f"({transform.name} has residual blocks); use float32"
    )
  return transform


class MaterializedTransform:
  """A Sequential of tfc.SignalConv2D layers (with GDN/IGDN, ReLU or no activation) and Lambda
  scalings, run as plain TF ops on kernels computed once.

  ``dtype`` float32: bit-identical to ``transform`` (tfc's own convolution ops). bfloat16: all
  conv layers but the last one (in g_s, to 3 channels, a small part of the work) run in
  bfloat16, with kernels, biases and GDN parameters cast once (Keras's mixed-precision policy
  would recompute them on every call); the output is float32, not rounded to bfloat16's 8-bit
  mantissa. A plain object, not a tf.Module: a model keeping one gains no checkpoint
  dependencies. It is a snapshot: build a new one after the weights change.
  """

  def __init__(self, transform, dtype="float32"):
    self.dtype = tf.as_dtype(check_precision(tf.as_dtype(dtype).name))
    convs = [layer for layer in transform.layers if isinstance(layer, tfc.SignalConv2D)]
    self._steps = []
    for layer in transform.layers:
      if isinstance(layer, tfc.SignalConv2D):
        dtype = tf.float32 if layer is convs[-1] else self.dtype
        self._steps.append(("conv", self._materialize_conv(layer, dtype)))
      elif isinstance(layer, tf.keras.layers.Lambda):
        self._steps.append(("lambda", layer))
      else:
        raise ValueError(
          f"materialized transform: unsupported layer {layer.name} ({type(layer).__name__})"
        )

  @staticmethod
  def _materialize_conv(layer, dtype):
    # The configurations the ms2020 transforms use, computed by tfc with EXPLICIT padding:
    # correlation + downsampling (g_a, h_a), transposed convolution + upsampling (g_s), or a
    # stride-1 convolution (the slice transforms, LRP), which tfc computes as a correlation with
    # the spatially flipped kernel: so do we.
    down = layer.corr and all(s == 1 for s in layer.strides_up)
    flipped = (
      not layer.corr
      and all(s == 1 for s in layer.strides_up)
      and all(s == 1 for s in layer.strides_down)
    )
    up = (
      not layer.corr
      and tuple(layer.strides_down) == (1, 1)
      and any(s > 1 for s in layer.strides_up)
      and all(k // 2 + s <= k for k, s in zip(layer.kernel_support, layer.strides_up))
    )
    if (
      not (down or up or flipped)
      or layer.padding != "same_zeros"
      or not layer.use_explicit
      or layer.channel_separable
      or layer.data_format != "channels_last"
      or any(k % 2 == 0 for k in layer.kernel_support)
    ):
      raise ValueError(
        f"materialized transform: layer {layer.name} is neither a 'same_zeros' "
        f"downsampling correlation, a stride-1 convolution nor an upsampling "
        f"transposed convolution"
      )
    kernel = layer.kernel[::-1, ::-1] if flipped else layer.kernel
    activation, gdn = layer.activation, None
    if activation is tf.keras.activations.linear:
      activation = None
    if isinstance(activation, tfc.GDN):
      if not (
        not activation.rectify
        and not callable(activation.alpha_parameter)
        and not callable(activation.epsilon_parameter)
        and activation.data_format == "channels_last"
      ):
        raise ValueError(
          f"materialized transform: layer {layer.name}: only fixed-exponent, "
          f"non-rectified GDN is supported"
        )
      gamma = tf.cast(activation.gamma, dtype)
      gdn = dict(
        inverse=activation.inverse,
        alpha=float(activation.alpha),
        epsilon=float(activation.epsilon),
        beta=tf.cast(activation.beta, dtype),
        gamma=tf.reshape(gamma, [1, 1] + gamma.shape),
      )
      activation = None
    elif isinstance(activation, tf.keras.layers.Layer):
      raise ValueError(
        f"materialized transform: layer {layer.name}: unsupported activation "
        f"layer {type(activation).__name__}"
      )
    return dict(
      layer=layer,
      dtype=dtype,
      up=up,
      kernel=tf.cast(kernel, dtype),
      bias=tf.cast(layer.bias, dtype) if layer.use_bias else None,
      activation=activation,
      gdn=gdn,
    )

  @staticmethod
  def _gdn(x, inverse, alpha, epsilon, beta, gamma):
    # tfc.GDN.call with rectify=False, channels_last, fixed alpha and epsilon.
    norm_pool = tf.math.square(x) if alpha == 2 else abs(x) if alpha == 1 else x**alpha
    norm_pool = tf.nn.bias_add(tf.nn.convolution(norm_pool, gamma, padding="VALID"), beta)
    if epsilon == 0.5:
      norm_pool = tf.math.sqrt(norm_pool)
    elif epsilon != 1:
      norm_pool = norm_pool**epsilon
    return x * norm_pool if inverse else x / norm_pool

  @staticmethod
  def _correlate_down(layer, x, kernel):
    padding = padding_ops.same_padding_for_kernel(layer.kernel_support, True, layer.strides_up)
    if x.dtype == tf.float32:  # tfc's own op: bit-identical to the layer
      return layer._correlate_down_explicit(x, kernel, padding)  # pylint: disable=protected-access
    # As for the transposed convolution below: pad, then a VALID convolution.
    x = tf.pad(x, [(0, 0)] + list(padding) + [(0, 0)])
    return tf.nn.conv2d(x, kernel, strides=layer.strides_down, padding="VALID")

  @staticmethod
  def _transpose_conv(layer, x, kernel):
    if x.dtype == tf.float32:  # tfc's own op: bit-identical to the layer
      return layer._up_convolve_transpose_explicit(  # pylint: disable=protected-access
        x, kernel, ((0, 0), (0, 0))
      )
    # oneDNN has no fast bfloat16 path for EXPLICIT padding: compute the full ("VALID")
    # transposed convolution and crop it to the window tfc's "same_zeros" padding keeps, which
    # starts at kernel_size // 2.
    strides, support = layer.strides_up, layer.kernel_support
    shape = tf.shape(x)
    full = [shape[0]] + [(shape[1 + i] - 1) * strides[i] + support[i] for i in range(2)]
    x = tf.nn.conv2d_transpose(
      x,
      tf.transpose(kernel, [0, 1, 3, 2]),
      full + [layer.filters],
      strides=strides,
      padding="VALID",
    )
    starts = [k // 2 for k in support]
    return x[
      :,
      starts[0] : starts[0] + shape[1] * strides[0],
      starts[1] : starts[1] + shape[2] * strides[1],
      :,
    ]

  def __call__(self, x):
    for kind, step in self._steps:
      if kind == "lambda":
        x = step(x)
        continue
      layer = step["layer"]
      x = tf.cast(x, step["dtype"])
      if step["up"]:
        x = self._transpose_conv(layer, x, step["kernel"])
      else:
        x = self._correlate_down(layer, x, step["kernel"])
      if step["bias"] is not None:
        x = tf.nn.bias_add(x, step["bias"])
      if step["activation"] is not None:
        x = step["activation"](x)
      if step["gdn"] is not None:
        x = self._gdn(x, **step["gdn"])
    return tf.cast(x, tf.float32)
