"""Evaluation with real bitstreams: each image goes through a real ``.cbx`` byte string
(``Codec.encode`` -> ``Bitstream.to_bytes`` -> ``Bitstream.from_bytes`` -> ``Codec.decode``),
the same path as ``cbexp codec``; the metrics are ``cbexp.evaluation.metrics``'s. Times: encode
and decode separately, after one untimed warm-up per image shape (tracing); a set reports the
median and the mean over images. ``evaluate(codec, paths)`` -> ``(per_image, summary)``.
"""

import math
import os
import time

import pandas as pd

from cbexp.evaluation import metrics

COLUMNS = (
  "image",
  "height",
  "width",
  "bytes",
  "bpp",
  "bpp_estimated",
  "psnr",
  "ms_ssim",
  "ms_ssim_db",
  "encode_s",
  "decode_s",
)


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
  ms_ssim = metrics.ms_ssim(image, decoded)
  estimated = math.nan
  if estimate_bits is not None:
    bits = estimate_bits(image)
    estimated = (bits["y"] + bits["z"]) / (height * width)
  return {
    "image": name,
    "height": height,
    "width": width,
    "bytes": len(data),
    "bpp": metrics.bits_per_pixel(len(data), height, width),
    "bpp_estimated": estimated,
    "psnr": metrics.psnr(image, decoded),
    "ms_ssim": ms_ssim,
    "ms_ssim_db": metrics.ms_ssim_db(ms_ssim),
    "encode_s": encode_s,
    "decode_s": decode_s,
  }


def summarize(per_image):
  """The set's numbers: means over images (MS-SSIM dB of the mean MS-SSIM; images without
  MS-SSIM left out of it), median and mean times, ``num_images``."""
  ms_ssim = float(per_image["ms_ssim"].mean())  # pandas skips NaN
  return {
    "bpp": float(per_image["bpp"].mean()),
    "bpp_estimated": float(per_image["bpp_estimated"].mean()),
    "psnr": float(per_image["psnr"].mean()),
    "ms_ssim": ms_ssim,
    "ms_ssim_db": metrics.ms_ssim_db(ms_ssim),
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
