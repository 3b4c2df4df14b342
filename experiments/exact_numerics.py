"""The exact entropy path's cost: float vs exact numerics of trained models.

    python experiments/exact_numerics.py OUT_DIR MODEL_DIR [MODEL_DIR ...]

For every model directory: the model is loaded twice in this process, with its float numerics and
with ``numerics="exact"`` (``cbexp.load.load_model``), and every evaluation image
(kodim13-24 of $CBEXP_KODAK_DIR, never trained on) is compressed and decompressed with both:
real bitstreams, the decoder's y_hat checked against the encoder's. Decode times are measured
side by side: per image, ``REPEATS`` rounds alternating float and exact decodes (after one
untimed warm-up per orientation), median per image, then the median over images of the per-image
exact/float ratio. BD-rate of exact against float per entropy model over its lambdas
(``cbexp.analysis.bd.bd_pair``, pchip). Writes per_image.csv, per_model.csv, bd_rate.csv.
"""

import os
import pathlib
import sys
import time

import numpy as np
import pandas as pd

REPEATS = 3
EVAL_IMAGES = [f"kodim{i}.png" for i in range(13, 25)]


def main(out_dir, model_dirs):
  import tensorflow as tf

  tf.config.threading.set_intra_op_parallelism_threads(1)  # 2 shared cores: less noise
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from cbexp.analysis.bd import bd_pair
  from cbexp.evaluation import metrics
  from cbexp.images import load_image
  from cbexp.load import load_model

  kodak = pathlib.Path(os.environ["CBEXP_KODAK_DIR"])
  images = [(name, tf.constant(load_image(kodak / name))) for name in EVAL_IMAGES]
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  rows = []
  for directory in model_dirs:
    models = {n: load_model(directory, numerics=n) for n in ("float", "exact")}
    cfg = models["float"][1]
    for name, image in images:
      shape = tuple(image.shape[:2])
      coded = {}
      for numerics, (model, _) in models.items():
        compressed = model.compress(image)
        decoded, y_hat = model.decompress(compressed, return_latent=True)
        if not np.array_equal(y_hat.numpy(), compressed.y_hat.numpy()):
          raise RuntimeError(f"{directory} {numerics} {name}: decoder's y_hat differs")
        coded[numerics] = (compressed, decoded)
      times = {n: [] for n in models}
      for _ in range(REPEATS):
        for numerics, (model, _) in models.items():
          start = time.perf_counter()
          model.decompress(coded[numerics][0])
          times[numerics].append(time.perf_counter() - start)
      h, w = shape
      for numerics in models:
        compressed, decoded = coded[numerics]
        rows.append(
          {
            "entropy": str(cfg.entropy.name),
            "lmbda": float(cfg.lmbda),
            "model_dir": str(directory),
            "numerics": numerics,
            "image": name,
            "bytes": compressed.num_bytes,
            "bpp": 8.0 * compressed.num_bytes / (h * w),
            "psnr": metrics.psnr(image, decoded),
            "decode_s": float(np.median(times[numerics])),
          }
        )
      print(
        rows[-2]["entropy"],
        rows[-2]["lmbda"],
        name,
        "bytes float/exact",
        rows[-2]["bytes"],
        rows[-1]["bytes"],
        "decode s",
        round(rows[-2]["decode_s"], 3),
        round(rows[-1]["decode_s"], 3),
        flush=True,
      )
  frame = pd.DataFrame(rows)
  frame.to_csv(out_dir / "per_image.csv", index=False)
  wide = frame.pivot_table(
    index=["entropy", "lmbda", "image"],
    columns="numerics",
    values=["bpp", "psnr", "decode_s", "bytes"],
  )
  per_model = pd.DataFrame(
    {
      "bpp_float": wide["bpp"]["float"].groupby(level=[0, 1]).mean(),
      "bpp_exact": wide["bpp"]["exact"].groupby(level=[0, 1]).mean(),
      "psnr_float": wide["psnr"]["float"].groupby(level=[0, 1]).mean(),
      "psnr_exact": wide["psnr"]["exact"].groupby(level=[0, 1]).mean(),
      "bytes_float": wide["bytes"]["float"].groupby(level=[0, 1]).sum(),
      "bytes_exact": wide["bytes"]["exact"].groupby(level=[0, 1]).sum(),
      "decode_s_float_median": wide["decode_s"]["float"].groupby(level=[0, 1]).median(),
      "decode_s_exact_median": wide["decode_s"]["exact"].groupby(level=[0, 1]).median(),
      "decode_ratio_median": (wide["decode_s"]["exact"] / wide["decode_s"]["float"])
      .groupby(level=[0, 1])
      .median(),
    }
  ).reset_index()
  per_model.to_csv(out_dir / "per_model.csv", index=False)
  bd = []
  for entropy, group in per_model.groupby("entropy"):
    group = group.sort_values("lmbda")
    if len(group) < 2:
      continue
    rate, quality = bd_pair(
      group.bpp_float, group.psnr_float, group.bpp_exact, group.psnr_exact, "pchip"
    )
    images = wide.loc[entropy]
    bd.append(
      {
        "entropy": entropy,
        "lambdas": len(group),
        "bd_rate_percent": rate,
        "bd_psnr_db": quality,
        "decode_ratio_median_all_images": float(
          (images["decode_s"]["exact"] / images["decode_s"]["float"]).median()
        ),
      }
    )
  pd.DataFrame(bd).to_csv(out_dir / "bd_rate.csv", index=False)
  print(per_model.to_string(index=False))
  print(pd.DataFrame(bd).to_string(index=False))


if __name__ == "__main__":
  if len(sys.argv) < 3:
    sys.exit("usage: python experiments/exact_numerics.py OUT_DIR MODEL_DIR [MODEL_DIR ...]")
  main(sys.argv[1], sys.argv[2:])
