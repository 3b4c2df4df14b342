"""Compute cost of encoding and decoding in kMAC per pixel, counted from the layer shapes at every
position the implementation computes: the transforms here (``transform_macs``), the entropy
model's stages by the model itself (``EntropyModel.decode_macs``). Biases, activations other
than GDN, tanh, rounding and range coding are not counted; per pixel is per padded pixel, as in
He et al. and ELIC. Counted rather than profiled: TensorFlow's profiler counts a while-loop body
once, so it cannot count a serial decoder (the tests compare the two on the other models).
"""

from cbexp.constants import padded_size
from cbexp.entropy.base import MAC_STAGES
from cbexp.models.transforms.layers import transform_macs

STAGES = MAC_STAGES + ("synthesis",)


def entropy_macs(entropy_model, latent_hw, z_hw):
  """{stage: MACs} of the entropy model's decoder (the encoder's work on the same stages), every
  one of MAC_STAGES present."""
  try:
    counted = dict(entropy_model.decode_macs(latent_hw, z_hw))
  except NotImplementedError:
    raise ValueError(
      f"complexity: no MAC count for entropy model "
      f"{type(entropy_model).__name__} (give it a decode_macs(latent_hw, z_hw) "
      f"method)"
    ) from None
  unknown = set(counted) - set(MAC_STAGES)
  if unknown:
    raise ValueError(
      f"complexity: {type(entropy_model).__name__}.decode_macs counts unknown "
      f"stages {sorted(unknown)} (known: {', '.join(MAC_STAGES)})"
    )
  return {stage: counted.get(stage, 0) for stage in MAC_STAGES}


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
  Stages: STAGES (0 where a model has no such stage)."""
  image_hw, latent_hw, z_hw = _grids(height, width)
  macs = entropy_macs(model.entropy_model, latent_hw, z_hw)
  macs["synthesis"] = transform_macs(model.synthesis, *latent_hw)
  return _per_pixel(macs, image_hw)


def encode_kmac_per_pixel(model, height=512, width=768):
  """{stage: kMAC per pixel} of ``model.compress``: analysis, hyper_analysis and the entropy
  model's stages (the encoder runs them too, to know the decoder's parameters), plus "total"."""
  image_hw, latent_hw, z_hw = _grids(height, width)
  macs = {
    "analysis": transform_macs(model.analysis, *image_hw),
    "hyper_analysis": transform_macs(model.hyper_analysis, *latent_hw),
  }
  macs.update(entropy_macs(model.entropy_model, latent_hw, z_hw))
  return _per_pixel(macs, image_hw)
