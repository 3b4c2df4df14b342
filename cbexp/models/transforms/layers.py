"""What the backbones (``ms2020``, ``mbt2018``, ``cheng2020``, ``elic``) and the entropy models
share: the hyper transforms and slice transforms (ms2020's layer shapes, widths from config), the
building blocks of the residual backbones, and what is derived from any of their layer lists: the
multiply-accumulate count (``transform_macs``) and the receptive field (``transform_reach``, which
sets the halo of tiled coding, ``cbexp.models.tiling``).
"""

import functools
import math
from fractions import Fraction

import tensorflow as tf
import tensorflow_compression as tfc


class SignalConv2D(tfc.SignalConv2D):
  """tfc's SignalConv2D, with its bias gradient summed in float32 when the layer computes in
  bfloat16 or float16 (``trainer.precision``): TensorFlow 2.14's CPU BiasAddGrad sums in the
  input's precision (in bfloat16, a bias's gradient over 2x64x64 positions came out 512 instead
  of 8197; a mixed-precision run then learned far slower than float32: tests/training/
  test_precision.py). A broadcast addition's gradient is a float32 sum. In float32 it is tfc's
  layer, call for call."""

  def call(self, inputs):
    if not self.use_bias or self.compute_dtype == "float32":
      return super().call(inputs)
    activation = self._activation
    self._use_bias, self._activation = False, None
    try:
      outputs = super().call(inputs)
    finally:
      self._use_bias, self._activation = True, activation
    outputs = outputs + self.bias
    return outputs if activation is None else activation(outputs)


def gdn(name, inverse=False):
  """tfc's GDN (IGDN if ``inverse``), computing in float32 under any mixed-precision policy: it is
  a small part of the work, its normalization (a square root of a sum over channels) is where
  reduced precision hurts most, and its beta's gradient would be a reduced-precision BiasAddGrad
  (``SignalConv2D``)."""
  return tfc.GDN(inverse=inverse, name=name, dtype="float32")


class HyperAnalysisTransform(tf.keras.Sequential):
  """h_a: y -> z, downsampling by another 4."""

  def __init__(self, filters, hyperprior_depth):
    super().__init__(name="hyper_analysis")
    conv = functools.partial(SignalConv2D, corr=True, padding="same_zeros")
    self.add(
      conv(filters[0], (3, 3), name="layer_0", strides_down=1, use_bias=True, activation=tf.nn.relu)
    )
    self.add(
      conv(filters[1], (5, 5), name="layer_1", strides_down=2, use_bias=True, activation=tf.nn.relu)
    )
    self.add(
      conv(
        hyperprior_depth, (5, 5), name="layer_2", strides_down=2, use_bias=False, activation=None
      )
    )


class HyperSynthesisTransform(tf.keras.Sequential):
  """h_s: z_hat -> hyper features at the latent resolution (latent_depth channels).

  The last ReLU is intended: the output is a feature map that the entropy model's own networks
  turn into means and scales, not the means and scales themselves.
  """

  def __init__(self, filters, latent_depth, name="hyper_synthesis"):
    super().__init__(name=name)
    conv = functools.partial(
      SignalConv2D, corr=False, padding="same_zeros", use_bias=True, kernel_parameter="variable"
    )
    self.add(conv(filters[0], (5, 5), name="layer_0", strides_up=2, activation=tf.nn.relu))
    self.add(conv(filters[1], (5, 5), name="layer_1", strides_up=2, activation=tf.nn.relu))
    self.add(conv(latent_depth, (3, 3), name="layer_2", strides_up=1, activation=tf.nn.relu))


class SliceTransform(tf.keras.Sequential):
  """ms2020's slice transform: the network shape used for ChARM's mean, scale and LRP predictors
  and for the checkerboard model's LRP (stride 1, so the output has the input's resolution)."""

  def __init__(self, hidden_filters, out_channels, name="slice_transform"):
    super().__init__(name=name)
    conv = functools.partial(
      SignalConv2D,
      corr=False,
      strides_up=1,
      padding="same_zeros",
      use_bias=True,
      kernel_parameter="variable",
    )
    self.add(conv(hidden_filters[0], (5, 5), name="layer_0", activation=tf.nn.relu))
    self.add(conv(hidden_filters[1], (5, 5), name="layer_1", activation=tf.nn.relu))
    self.add(conv(out_channels, (3, 3), name="layer_2", activation=None))


def _signal_conv_macs(layer, height, width):
  """One tfc.SignalConv2D (with its GDN/IGDN) on an h x w input -> (MACs, (out_h, out_w)).

  A correlation (``corr=True``, ``strides_down=s``) computes ``kh * kw * c_in * c_out`` MACs at
  each of its ``ceil(h / s) * ceil(w / s)`` output positions; a transposed convolution
  (``strides_up=s``) spreads each of its ``h * w`` input positions over ``kh * kw`` taps (the
  same as s * s times fewer taps at s * s times more output positions); GDN / IGDN costs
  ``c * c`` per output position (its gamma matrix)."""
  kh, kw, c_in, c_out = (int(d) for d in layer.kernel.shape)
  up, down = layer.strides_up, layer.strides_down
  if layer.corr:
    out_h, out_w = math.ceil(height / down[0]), math.ceil(width / down[1])
    macs = out_h * out_w * kh * kw * c_in * c_out
  else:
    if tuple(down) != (1, 1):
      raise ValueError(f"{layer.name}: transposed convolution with strides_down {down}")
    out_h, out_w = height * up[0], width * up[1]
    macs = height * width * kh * kw * c_in * c_out
  if isinstance(layer.activation, tfc.GDN):
    macs += out_h * out_w * c_out * c_out
  return macs, (out_h, out_w)


def transform_macs(transform, height, width):
  """Multiply-accumulates of a transform on a height x width input: a Sequential (or list) of
  tfc.SignalConv2D layers, blocks with their own ``macs(height, width) -> (MACs, (h, w))``,
  standalone GDN layers (``c * c`` per position) and free layers (Lambda scalings, activations;
  biases are not counted either)."""
  return layers_macs(getattr(transform, "layers", transform), height, width)[0]


def layers_macs(layers, height, width):
  """-> (MACs, (out_h, out_w)) of ``layers`` applied in order (``transform_macs``)."""
  total = 0
  for layer in layers:
    if isinstance(layer, tfc.SignalConv2D):
      macs, (height, width) = _signal_conv_macs(layer, height, width)
    elif hasattr(layer, "macs"):
      macs, (height, width) = layer.macs(height, width)
    elif isinstance(layer, tfc.GDN):
      channels = int(layer.gamma.shape[0])
      macs = height * width * channels * channels
    elif isinstance(
      layer, (tf.keras.layers.Lambda, tf.keras.layers.LeakyReLU, tf.keras.layers.ReLU)
    ):
      macs = 0
    else:
      raise ValueError(
        f"transform_macs: no MAC count for layer {layer.name} ({type(layer).__name__})"
      )
    total += macs
  return total, (height, width)


def _signal_conv_reach(layer):
  """One tfc.SignalConv2D -> (radius, scale) (``layers_reach``). With ``same_zeros`` padding the
  first output sample is aligned with the first input sample (tfc's documentation): a correlation
  with stride d reads inputs d*j - (k-1)/2 .. d*j + (k-1)/2 for output j; a transposed convolution
  with stride u places input i at output u*i, so output j reads the inputs i with
  |u*i - j| <= (k-1)/2: a radius of (k-1)/(2u) input samples around j/u."""
  if layer.padding != "same_zeros":
    raise ValueError(f"{layer.name}: receptive field of padding {layer.padding!r} not derived")
  up, down = tuple(layer.strides_up), tuple(layer.strides_down)
  support = tuple(int(k) for k in layer.kernel_support)
  if len(set(support)) != 1 or support[0] % 2 == 0 or len(set(up)) != 1 or len(set(down)) != 1:
    raise ValueError(f"{layer.name}: receptive field of a non-square or even kernel not derived")
  half = Fraction(support[0] - 1, 2)
  if layer.corr and up[0] == 1:
    return half, Fraction(down[0])
  if not layer.corr and down[0] == 1:
    return half / up[0], Fraction(1, up[0])
  raise ValueError(f"{layer.name}: receptive field of strides up {up} and down {down} not derived")


def layers_reach(layers):
  """-> (radius, scale) of ``layers`` applied in order: output sample j depends on input samples
  within ``radius`` of position ``j * scale`` (both in input samples; exact fractions; ``scale``
  16 for an analysis, 1/16 for a synthesis). Layers: tfc.SignalConv2D, blocks with their own
  ``reach() -> (radius, scale)``, and pointwise layers (GDN, Lambda scalings, activations)."""
  radius, scale = Fraction(0), Fraction(1)
  for layer in layers:
    if isinstance(layer, tfc.SignalConv2D):
      layer_radius, layer_scale = _signal_conv_reach(layer)
    elif hasattr(layer, "reach"):
      layer_radius, layer_scale = layer.reach()
    elif isinstance(
      layer, (tfc.GDN, tf.keras.layers.Lambda, tf.keras.layers.LeakyReLU, tf.keras.layers.ReLU)
    ):
      layer_radius, layer_scale = Fraction(0), Fraction(1)
    else:
      raise ValueError(
        f"layers_reach: no receptive field for layer {layer.name} ({type(layer).__name__})"
      )
    radius += layer_radius * scale  # the layer's radius, in this stack's input samples
    scale *= layer_scale
  return radius, scale


def transform_reach(transform):
  """(radius, scale) of a transform (a Sequential or a list of layers): ``layers_reach``."""
  return layers_reach(getattr(transform, "layers", transform))


def conv(filters, kernel, stride=1, activation=None, name=None):
  """A convolution as PyTorch's ``nn.Conv2d(padding=k // 2)`` computes it ("same" zero padding,
  output ceil(size / stride)), with plain kernel variables (PyTorch's parameter count): the
  residual backbones' layer."""
  return SignalConv2D(
    filters,
    (kernel, kernel),
    corr=True,
    strides_down=stride,
    padding="same_zeros",
    use_bias=True,
    kernel_parameter="variable",
    activation=activation,
    name=name,
  )


def deconv(filters, kernel, stride=2, name=None):
  """A transposed convolution upsampling by ``stride`` (PyTorch's ``ConvTranspose2d`` with
  ``output_padding = stride - 1``), plain kernel variables."""
  return SignalConv2D(
    filters,
    (kernel, kernel),
    corr=False,
    strides_up=stride,
    padding="same_zeros",
    use_bias=True,
    kernel_parameter="variable",
    name=name,
  )


class Block(tf.keras.layers.Layer):
  """A block of layers with a skip connection: ``call`` is written out by each block, ``macs``
  sums its layers' counts (``sublayers``: the layers on the main path, in order, then the
  ``skip`` layers, which run on the block's input)."""

  def __init__(self, name=None):
    super().__init__(name=name)
    # Assigned in __init__, never as class attributes: Keras tracks (and checkpoints) only the
    # layers of lists assigned to the instance.
    self.sublayers = []
    self.skip = []

  def macs(self, height, width):
    macs, out_hw = layers_macs(self.sublayers, height, width)
    return macs + layers_macs(self.skip, height, width)[0], out_hw

  def reach(self):
    """The wider of the main path's and the skip's receptive fields (``layers_reach``)."""
    radius, scale = layers_reach(self.sublayers)
    if self.skip:
      skip_radius, skip_scale = layers_reach(self.skip)
      if skip_scale != scale:
        raise ValueError(f"{self.name}: the skip's scale {skip_scale} is not the main path's")
      radius = max(radius, skip_radius)
    return radius, scale


class Subsample(tf.keras.layers.Layer):
  """Keeps every ``stride``-th row and column from the first (a 1x1 convolution's sampling with
  stride ``stride``, PyTorch's and tfc's): output ceil(size / stride)."""

  def __init__(self, stride, name=None):
    super().__init__(name=name)
    self.stride = stride

  def macs(self, height, width):
    return 0, (-(-height // self.stride), -(-width // self.stride))

  def reach(self):
    return Fraction(0), Fraction(self.stride)

  def call(self, x):
    return x[:, :: self.stride, :: self.stride, :]


def leaky_relu(x):
  return tf.nn.leaky_relu(x, alpha=0.01)  # PyTorch's nn.LeakyReLU default slope


class ResidualUnit(Block):
  """1x1 (c -> c/2), ReLU, 3x3, ReLU, 1x1 (c/2 -> c), plus identity: the unit of the attention
  block (Cheng et al. 2020) and ELIC's residual bottleneck block."""

  def __init__(self, channels, relu_after=False, name=None):
    super().__init__(name=name)
    self.relu_after = relu_after
    half = channels // 2
    self.sublayers = [
      conv(half, 1, activation=tf.nn.relu, name="conv_0"),
      conv(half, 3, activation=tf.nn.relu, name="conv_1"),
      conv(channels, 1, name="conv_2"),
    ]

  def call(self, x):
    out = x
    for layer in self.sublayers:
      out = layer(out)
    out = out + x
    return tf.nn.relu(out) if self.relu_after else out


class AttentionBlock(Block):
  """The simplified attention module of Cheng et al. 2020 (also ELIC's): a trunk of three
  residual units times a sigmoid mask (three residual units and a 1x1), plus identity."""

  def __init__(self, channels, name=None):
    super().__init__(name=name)
    self.trunk = [ResidualUnit(channels, relu_after=True, name=f"trunk_{i}") for i in range(3)]
    self.mask = [ResidualUnit(channels, relu_after=True, name=f"mask_{i}") for i in range(3)]
    self.mask.append(conv(channels, 1, name="mask_conv"))
    self.sublayers = self.trunk
    self.skip = self.mask

  def call(self, x):
    a, b = x, x
    for layer in self.trunk:
      a = layer(a)
    for layer in self.mask:
      b = layer(b)
    return a * tf.math.sigmoid(b) + x
