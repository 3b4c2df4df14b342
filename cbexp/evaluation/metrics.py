"""The one definition of every quality and rate metric cbexp reports: evaluation, the benchmark,
conformance, training logs and the analysis all call these. Images are uint8 RGB [H, W, 3] on
the 0..255 scale. bpp is 8 x the bytes of the whole .cbx file (header and checksum included) per
pixel of the unpadded image. A set's PSNR and MS-SSIM are means over images, its MS-SSIM dB the
dB of the mean MS-SSIM (the dB axis only displays MS-SSIM, as in CompressAI's plots).
"""

import math

import numpy as np

from cbexp.codec.bitstream import bits_per_pixel  # noqa: F401 - bpp: the whole .cbx file

MAX_VALUE = 255.0
# tf.image.ssim_multiscale's 5 scales with an 11-tap filter need (11 - 1) * 2**4 + 1 pixels.
MS_SSIM_MIN_SIZE = 161


def _float_images(original, decoded):
  import tensorflow as tf

  return tf.cast(original, tf.float32), tf.cast(decoded, tf.float32)


def psnr(original, decoded):
  """PSNR in dB over RGB (``tf.image.psnr``, peak 255) of two images."""
  import tensorflow as tf

  return float(tf.image.psnr(*_float_images(original, decoded), max_val=MAX_VALUE))


def ms_ssim(original, decoded):
  """MS-SSIM (``tf.image.ssim_multiscale`` with its defaults) of two images; NaN for an image
  with a side under MS_SSIM_MIN_SIZE, too small for its five scales."""
  import tensorflow as tf

  if min(original.shape[0], original.shape[1]) < MS_SSIM_MIN_SIZE:
    return math.nan
  return float(tf.image.ssim_multiscale(*_float_images(original, decoded), max_val=MAX_VALUE))


def ms_ssim_db(value):
  """-10 log10(1 - MS-SSIM) (numbers or arrays); +inf at MS-SSIM 1, NaN stays NaN."""
  values = np.asarray(value, dtype=float)
  with np.errstate(divide="ignore", invalid="ignore"):
    db = -10.0 * np.log10(1.0 - values)
  return float(db) if db.ndim == 0 else db


def psnr_from_mse(mse):
  """PSNR in dB of a mean squared error on the 0..255 scale (numbers or arrays); +inf at 0."""
  values = np.asarray(mse, dtype=float)
  with np.errstate(divide="ignore", invalid="ignore"):
    db = 10.0 * np.log10(MAX_VALUE**2 / values)
  return float(db) if db.ndim == 0 else db


def mse_from_psnr(value):
  """The mean squared error (0..255 scale) of a PSNR in dB (numbers, arrays or pandas series)."""
  return MAX_VALUE**2 / 10 ** (value / 10)


def max_abs_difference(a, b):
  """The largest absolute difference of two integer images (0 when identical)."""
  return int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max(initial=0))
