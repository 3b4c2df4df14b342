"""Compute cost of encoding and decoding, in kMAC per pixel, counted from the layer shapes.

A multiply-accumulate (MAC) is counted for every kernel tap, input channel and output channel at
every position the implementation actually computes:

* a convolution (``tfc.SignalConv2D`` with ``corr=True``, ``strides_down=s``) computes
  ``kh * kw * c_in * c_out`` MACs at each of its ``ceil(h / s) * ceil(w / s)`` output positions;
* a transposed convolution (``corr=False``, ``strides_up=s``) spreads each of its ``h * w``
  input positions over ``kh * kw`` taps: ``h * w * kh * kw * c_in * c_out`` MACs (the same as
  ``s * s`` times fewer taps at ``s * s`` times more output positions);
* GDN / IGDN costs ``c * c`` MACs per output position (its gamma matrix);
* a dense (1x1) layer costs ``c_in * c_out`` per position it runs on: the checkerboard model
  runs its entropy-parameter network on the anchors (hyper part of the first layer only: the
  anchors' context is exactly zero and is not computed) and then on the non-anchors;
* the checkerboard context as the implementation computes it (``context_model.positions``):
  "coded", at each non-anchor (half the positions) a 3x3 correlation over the two packed anchor
  grids (18 taps, 6 of them zero); "full_grid", a plain 5x5 convolution of the masked kernel at
  every latent position (masked taps are multiplied too); charm_checkerboard: the same per
  slice, on the slice's channels;
* the serial (autoregressive) decoder as its loop computes it: per row, the context of the two
  rows above (2x5 taps) for the whole row, and its product with g_ep's context weights; per
  position, the two left taps folded into g_ep's first layer (2M x 3M) and g_ep's other layers;
  once per image, that folding ([2M, 2M] x [2M, 3M]); g_ep's hyper part at every position at once.

Biases, activations other than GDN, tanh, rounding and range coding are not counted.
Per pixel means per pixel of the (padded) image, as in He et al. and ELIC.

Why counted from shapes and not with TensorFlow's profiler (``tf.compat.v1.profiler``, which sums
the flops statistics registered for Conv2D, Conv2DBackpropInput and MatMul): the profiler needs
a graph traced with static shapes per stage and image size, and counts a ``tf.while_loop`` body
once, so it cannot count the autoregressive decoder. For every other model the two agree exactly
(``tests/test_complexity.py`` compares them stage by stage on traced graphs).
"""
import math

import tensorflow_compression as tfc

from cbexp.models.compression import padded_size

STAGES = ("hyper_synthesis", "context", "entropy_parameters", "lrp", "synthesis")
ENCODER_STAGES = ("analysis", "hyper_analysis") + STAGES[:-1]


def _signal_conv_macs(layer, height, width):
  """MACs of one tfc.SignalConv2D (with its GDN/IGDN activation) on an h x w input -> (macs,
  (out_h, out_w))."""
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


def sequential_macs(transform, height, width):
  """MACs of a Sequential of SignalConv2D layers (Lambda scalings are free) -> (macs, out_hw)."""
  total = 0
  for layer in transform.layers:
    if isinstance(layer, tfc.SignalConv2D):
      macs, (height, width) = _signal_conv_macs(layer, height, width)
      total += macs
  return total, (height, width)


def dense_macs(layer, positions):
  c_in, c_out = (int(d) for d in layer.kernel.shape)
  return positions * c_in * c_out


def entropy_parameters_macs(net, positions, with_context):
  """cbexp.entropy.layers.EntropyParameters on ``positions`` positions."""
  macs = dense_macs(net.from_hyper, positions)
  if with_context:
    macs += dense_macs(net.from_context, positions)
  for layer in net.hidden + [net.out]:
    macs += dense_macs(layer, positions)
  return macs


def conv_macs(layer, positions):
  """A Keras Conv2D (e.g. the masked context convolution) at ``positions`` output positions."""
  kh, kw, c_in, c_out = (int(d) for d in layer.kernel.shape)
  return positions * kh * kw * c_in * c_out


def checkerboard_context_macs(layer, positions):
  """A CheckerboardContext over a latent grid of ``positions`` positions, as it computes it."""
  if layer.positions == "full_grid":
    return conv_macs(layer, positions)
  _, _, c_in, c_out = (int(d) for d in layer.kernel.shape)
  return positions // 2 * 3 * 3 * 2 * c_in * c_out


def _entropy_macs(entropy_model, latent_hw, z_hw):
  """{stage: MACs} of the entropy model's decoder (== the encoder's work on the same stages)."""
  from cbexp.entropy.autoregressive import AutoregressiveEntropyModel
  from cbexp.entropy.charm import CharmEntropyModel
  from cbexp.entropy.charm_checkerboard import CharmCheckerboardEntropyModel
  from cbexp.entropy.checkerboard import CheckerboardEntropyModel
  from cbexp.entropy.hyperprior import HyperpriorEntropyModel
  if hasattr(entropy_model, "decode_macs"):  # hook for models defined elsewhere
    return dict(entropy_model.decode_macs(latent_hw, z_hw))
  positions = latent_hw[0] * latent_hw[1]
  macs = dict.fromkeys(STAGES[:-1], 0)
  if isinstance(entropy_model, CharmEntropyModel):
    for transform in (entropy_model.hyper_synthesis_mean, entropy_model.hyper_synthesis_scale):
      macs["hyper_synthesis"] += sequential_macs(transform, *z_hw)[0]
    for i in range(entropy_model.num_slices):
      macs["entropy_parameters"] += sequential_macs(entropy_model.cc_mean[i], *latent_hw)[0]
      macs["entropy_parameters"] += sequential_macs(entropy_model.cc_scale[i], *latent_hw)[0]
      macs["lrp"] += sequential_macs(entropy_model.lrp[i], *latent_hw)[0]
  elif isinstance(entropy_model, CheckerboardEntropyModel):
    macs["hyper_synthesis"] = sequential_macs(entropy_model.hyper_synthesis, *z_hw)[0]
    if getattr(entropy_model, "hyper_synthesis_scale", None) is not None:  # like-for-like switch
      macs["hyper_synthesis"] += sequential_macs(entropy_model.hyper_synthesis_scale, *z_hw)[0]
    half = positions // 2
    macs["context"] = checkerboard_context_macs(entropy_model.context_model, positions)
    macs["entropy_parameters"] = (
        entropy_parameters_macs(entropy_model.entropy_parameters, half, with_context=False)
        + entropy_parameters_macs(entropy_model.entropy_parameters, half, with_context=True))
    macs["lrp"] = sequential_macs(entropy_model.lrp, *latent_hw)[0]
  elif isinstance(entropy_model, CharmCheckerboardEntropyModel):
    half = positions // 2
    for transform in (entropy_model.hyper_synthesis_mean, entropy_model.hyper_synthesis_scale):
      macs["hyper_synthesis"] += sequential_macs(transform, *z_hw)[0]
    for i in range(len(entropy_model.slices)):
      macs["entropy_parameters"] += (
          sequential_macs(entropy_model.cc_mean[i], *latent_hw)[0]
          + sequential_macs(entropy_model.cc_scale[i], *latent_hw)[0]
          + entropy_parameters_macs(entropy_model.entropy_parameters[i], half, False)
          + entropy_parameters_macs(entropy_model.entropy_parameters[i], half, True))
      macs["context"] += checkerboard_context_macs(entropy_model.context_models[i], positions)
      macs["lrp"] += sequential_macs(entropy_model.lrp[i], *latent_hw)[0]
  elif isinstance(entropy_model, AutoregressiveEntropyModel):
    macs["hyper_synthesis"] = sequential_macs(entropy_model.hyper_synthesis, *z_hw)[0]
    net = entropy_model.entropy_parameters
    depth = entropy_model.latent_depth
    _, _, c_in, c_context = (int(d) for d in entropy_model.context_model.kernel.shape)
    width_0 = int(net.from_context.kernel.shape[1])
    # rows above: 2x5 taps for every position; the left taps folded into g_ep (once per image)
    macs["context"] = positions * 10 * c_in * c_context + 2 * depth * c_context * width_0
    macs["entropy_parameters"] = (
        dense_macs(net.from_hyper, positions)      # hyper part, all positions at once
        + dense_macs(net.from_context, positions)  # (context of the rows above) x weights, per row
        + positions * 2 * depth * width_0          # the folded left taps, per position
        + sum(dense_macs(layer, positions) for layer in net.hidden + [net.out]))
    macs["lrp"] = sequential_macs(entropy_model.lrp, *latent_hw)[0]
  elif isinstance(entropy_model, HyperpriorEntropyModel):
    macs["hyper_synthesis"] = sequential_macs(entropy_model.hyper_synthesis, *z_hw)[0]
    macs["entropy_parameters"] = entropy_parameters_macs(
        entropy_model.entropy_parameters, positions, with_context=False)
    macs["lrp"] = sequential_macs(entropy_model.lrp, *latent_hw)[0]
  else:
    raise ValueError(f"complexity: no MAC count for entropy model "
                     f"{type(entropy_model).__name__} (give it a decode_macs(latent_hw, z_hw) "
                     f"method)")
  return macs


def _grids(height, width):
  if height < 1 or width < 1:
    raise ValueError(f"complexity: image size must be positive, got {height}x{width}")
  h, w = padded_size(height), padded_size(width)
  return (h, w), (h // 16, w // 16), (h // 64, w // 64)


def _per_pixel(macs, image_hw):
  pixels = image_hw[0] * image_hw[1]
  result = {stage: value / pixels / 1e3 for stage, value in macs.items()}
  result["total"] = sum(macs.values()) / pixels / 1e3
  return result


def decode_kmac_per_pixel(model, height=512, width=768):
  """{stage: kMAC per pixel} of ``model.decompress`` for a height x width image, plus "total".
  Stages: hyper_synthesis, context, entropy_parameters, lrp, synthesis (0 where a model has
  no such stage)."""
  image_hw, latent_hw, z_hw = _grids(height, width)
  macs = _entropy_macs(model.entropy_model, latent_hw, z_hw)
  macs["synthesis"] = sequential_macs(model.synthesis, *latent_hw)[0]
  return _per_pixel(macs, image_hw)


def encode_kmac_per_pixel(model, height=512, width=768):
  """{stage: kMAC per pixel} of ``model.compress``: analysis, hyper_analysis and the entropy
  model's stages (the encoder runs them too, to know the decoder's parameters), plus "total"."""
  image_hw, latent_hw, z_hw = _grids(height, width)
  macs = {"analysis": sequential_macs(model.analysis, *image_hw)[0],
          "hyper_analysis": sequential_macs(model.hyper_analysis, *latent_hw)[0]}
  macs.update(_entropy_macs(model.entropy_model, latent_hw, z_hw))
  return _per_pixel(macs, image_hw)
