"""Evaluation with real bitstreams, and the one definition of every quality and rate metric.

Each image goes through a real ``.cbx`` byte string (``Codec.encode`` -> ``Bitstream.to_bytes``
-> ``Bitstream.from_bytes`` -> ``Codec.decode``), the same path as ``python -m cbexp.codec``.
``cbexp.run``'s final evaluation, ``cbexp.codec eval``, the analysis and the CompressAI JSON all
read the numbers defined here:

* ``bpp``: 8 x (bytes of the whole ``.cbx`` file, header and checksum included) / (height x
  width of the unpadded image): what a user stores. ``bpp_estimated`` (runs only): the model's
  own estimate for the same quantized latents.
* ``psnr``: over RGB on the 0..255 scale (``tf.image.psnr``), per image; a set's PSNR is the
  mean of the per-image values (as published Kodak numbers are).
* ``ms_ssim``: ``tf.image.ssim_multiscale`` with its defaults, per image (NaN for images with a
  side under 161 pixels, too small for its five scales); a set's MS-SSIM is the mean over images.
* ``ms_ssim_db``: -10 log10(1 - MS-SSIM). A set's value is the dB of its *mean* MS-SSIM (not the
  mean of per-image dB): the dB axis is only a display of MS-SSIM, as in CompressAI's plots.
* times: encode (network + range coding + packing) and decode (parsing + range decoding +
  network) separately, after one untimed warm-up per image shape (tracing); a set reports the
  median and the mean over images.

``evaluate(codec, paths)`` -> ``(per_image, summary)``: a DataFrame with ``COLUMNS`` and
``summarize(per_image)``.
"""
import math
import os
import time

import numpy as np
import pandas as pd

from cbexp.codec.bitstream import bits_per_pixel  # whole file: header and checksum included

COLUMNS = ("image", "height", "width", "bytes", "bpp", "bpp_estimated", "psnr", "ms_ssim",
           "ms_ssim_db", "encode_s", "decode_s")

# tf.image.ssim_multiscale's 5 scales with an 11-tap filter need (11 - 1) * 2**4 + 1 pixels.
MS_SSIM_MIN_SIZE = 161


def ms_ssim_db(ms_ssim):
  """-10 log10(1 - MS-SSIM) (numbers or arrays); +inf at MS-SSIM 1, NaN stays NaN."""
  values = np.asarray(ms_ssim, dtype=float)
  with np.errstate(divide="ignore", invalid="ignore"):
    db = -10.0 * np.log10(1.0 - values)
  return float(db) if db.ndim == 0 else db


def quality(original, decoded):
  """(PSNR in dB, MS-SSIM) of two uint8 [H, W, 3] images (RGB, 0..255)."""
  import tensorflow as tf
  x = tf.cast(original, tf.float32)
  x_hat = tf.cast(decoded, tf.float32)
  psnr = float(tf.image.psnr(x, x_hat, max_val=255.0))
  if min(x.shape[0], x.shape[1]) < MS_SSIM_MIN_SIZE:
    return psnr, math.nan
  return psnr, float(tf.image.ssim_multiscale(x, x_hat, max_val=255.0))


def evaluate_image(codec, image, name="image", estimate_bits=None):
  """One row of the per-image table: ``image`` (uint8) through a real ``.cbx`` byte string."""
  from cbexp.codec.bitstream import Bitstream
  height, width = image.shape[:2]
  start = time.perf_counter()
  data = codec.encode(image).to_bytes()
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  decoded = codec.decode(Bitstream.from_bytes(data))
  decode_s = time.perf_counter() - start
  psnr, ms_ssim = quality(image, decoded)
  estimated = math.nan
  if estimate_bits is not None:
    bits = estimate_bits(image)
    estimated = (bits["y"] + bits["z"]) / (height * width)
  return {"image": name, "height": height, "width": width, "bytes": len(data),
          "bpp": bits_per_pixel(len(data), height, width), "bpp_estimated": estimated,
          "psnr": psnr, "ms_ssim": ms_ssim, "ms_ssim_db": ms_ssim_db(ms_ssim),
          "encode_s": encode_s, "decode_s": decode_s}


def summarize(per_image):
  """The set's numbers: means over images (MS-SSIM dB of the mean MS-SSIM; images without
  MS-SSIM left out of it), median and mean times, ``num_images``."""
  ms_ssim = float(per_image["ms_ssim"].mean())  # pandas skips NaN
  return {
      "bpp": float(per_image["bpp"].mean()),
      "bpp_estimated": float(per_image["bpp_estimated"].mean()),
      "psnr": float(per_image["psnr"].mean()),
      "ms_ssim": ms_ssim,
      "ms_ssim_db": ms_ssim_db(ms_ssim),
      "encode_time_median": float(per_image["encode_s"].median()),
      "decode_time_median": float(per_image["decode_s"].median()),
      "encode_time_mean": float(per_image["encode_s"].mean()),
      "decode_time_mean": float(per_image["decode_s"].mean()),
      "num_images": int(len(per_image)),
  }


def evaluate(codec, paths, warmup=True, progress=None, estimate_bits=None):
  """Codes every image in ``paths`` for real with ``codec`` (``cbexp.codec.Codec``).

  ``progress(row)`` is called after each image; ``estimate_bits(image) -> {"y", "z"}`` (a
  model's ``estimate_bits``) fills ``bpp_estimated``. -> (per-image DataFrame, summary dict)."""
  from cbexp.images import load_image
  if not paths:
    raise ValueError("evaluate: no images given")
  rows, warmed_up = [], set()
  for path in paths:
    image = codec.check_image(load_image(path))
    if warmup and image.shape not in warmed_up:
      codec.decode(codec.encode(image))
      warmed_up.add(image.shape)
    rows.append(evaluate_image(codec, image, os.path.basename(str(path)), estimate_bits))
    if progress:
      progress(rows[-1])
  per_image = pd.DataFrame(rows, columns=list(COLUMNS))
  return per_image, summarize(per_image)
