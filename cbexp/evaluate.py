"""Evaluation with real bitstreams: compress and decompress each image with the model's range
coders, then measure what came out.

``evaluate(model, paths)`` -> ``(per_image, summary)``:

* ``per_image``: a pandas DataFrame, one row per image, columns ``image, height, width, bytes,
  bpp, bpp_estimated, psnr, ms_ssim, ms_ssim_db, encode_s, decode_s``. ``bpp`` is
  8 * (bytes of all strings) / (height * width) of the unpadded image; ``bpp_estimated`` is the
  model's own estimate for the same quantized latents (the gap is the cost of range coding and
  of quantized scale indexes); PSNR is over RGB on the 0..255 scale, MS-SSIM with tf.image's
  defaults (NaN for images too small for its five scales, under 161 pixels a side).
* ``summary``: means over images (``bpp, bpp_estimated, psnr, ms_ssim, ms_ssim_db``), median
  and mean encode/decode seconds per image and ``num_images``. ``cbexp.run`` logs it under
  ``eval/``.

Timing: each new image shape is coded once untimed first (``warmup``), so that tracing
``tf.function``s is not counted; encode and decode are timed separately.
"""
import math
import os
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from cbexp.data import load_image

COLUMNS = ("image", "height", "width", "bytes", "bpp", "bpp_estimated", "psnr", "ms_ssim",
           "ms_ssim_db", "encode_s", "decode_s")

# tf.image.ssim_multiscale's 5 scales with an 11-tap filter need (11 - 1) * 2**4 + 1 pixels.
MS_SSIM_MIN_SIZE = 161


def ms_ssim_db(ms_ssim):
  """-10 log10(1 - MS-SSIM), the usual way to plot MS-SSIM."""
  return -10.0 * math.log10(1.0 - ms_ssim) if ms_ssim < 1.0 else math.inf


def quality(original, decoded):
  """PSNR (dB, RGB, 0..255) and MS-SSIM of two uint8 [H, W, 3] images."""
  x = tf.cast(original, tf.float32)
  x_hat = tf.cast(decoded, tf.float32)
  psnr = float(tf.image.psnr(x, x_hat, max_val=255.0))
  if min(x.shape[0], x.shape[1]) < MS_SSIM_MIN_SIZE:
    return psnr, math.nan
  return psnr, float(tf.image.ssim_multiscale(x, x_hat, max_val=255.0))


def evaluate_image(model, image, name="image"):
  """One row of the per-image table for a uint8 image (coders must be built)."""
  height, width = image.shape[:2]
  start = time.perf_counter()
  compressed = model.compress(image)
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  decoded = model.decompress(compressed)
  decoded = decoded.numpy() if hasattr(decoded, "numpy") else np.asarray(decoded)
  decode_s = time.perf_counter() - start
  psnr, ms_ssim = quality(image, decoded)
  estimated = model.estimate_bits(image)
  num_pixels = height * width
  return {"image": name, "height": height, "width": width, "bytes": compressed.num_bytes,
          "bpp": 8.0 * compressed.num_bytes / num_pixels,
          "bpp_estimated": (estimated["y"] + estimated["z"]) / num_pixels,
          "psnr": psnr, "ms_ssim": ms_ssim,
          "ms_ssim_db": ms_ssim_db(ms_ssim) if not math.isnan(ms_ssim) else math.nan,
          "encode_s": encode_s, "decode_s": decode_s}


def summarize(per_image):
  """Means of the quality and rate columns, median/mean of the times."""
  return {
      "bpp": float(per_image["bpp"].mean()),
      "bpp_estimated": float(per_image["bpp_estimated"].mean()),
      "psnr": float(per_image["psnr"].mean()),
      "ms_ssim": float(per_image["ms_ssim"].mean()),
      "ms_ssim_db": float(per_image["ms_ssim_db"].mean()),
      "encode_time_median": float(per_image["encode_s"].median()),
      "decode_time_median": float(per_image["decode_s"].median()),
      "encode_time_mean": float(per_image["encode_s"].mean()),
      "decode_time_mean": float(per_image["decode_s"].mean()),
      "num_images": int(len(per_image)),
  }


def evaluate(model, paths, warmup=True, progress=True):
  """Codes every image in ``paths`` for real. -> (per-image DataFrame, summary dict)."""
  from tqdm import tqdm
  if not paths:
    raise ValueError("evaluate: no images given")
  model.z_coder  # raises a clear error if the range-coding tables are not built
  rows, warmed_up = [], set()
  for path in tqdm(paths, desc="evaluate", unit="image", disable=not progress):
    image = load_image(path)
    if warmup and image.shape not in warmed_up:
      model.decompress(model.compress(image))
      warmed_up.add(image.shape)
    rows.append(evaluate_image(model, image, name=os.path.basename(str(path))))
  per_image = pd.DataFrame(rows, columns=list(COLUMNS))
  return per_image, summarize(per_image)
