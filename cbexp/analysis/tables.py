"""The published study's comparison table, CompressAI-schema results and Markdown rendering."""

import math

import numpy as np
import pandas as pd

from cbexp.analysis.points import curves_of

NOT_AVAILABLE = "n/a"


def _single(values):
  """The one value a curve's runs share (parameters, kMAC): NaN if none; all if they differ."""
  values = sorted(set(float(v) for v in values if not pd.isna(v)))
  if not values:
    return np.nan
  if len(values) > 1:
    return "/".join(f"{v:g}" for v in values)  # honest: the runs of this curve disagree
  return values[0]


COMPARISON_COLUMNS = [
  "curve",
  "entropy",
  "anchor",
  "rate_points",
  "lmbdas",
  "seeds_per_point",
  "images",
  "train_set",
  "eval_set",
  "trainable_parameters",
  "decode_kmac_per_pixel",
  "encode_time_median_s",
  "decode_time_median_s",
]


def comparison_table(points, anchor_of, bd=None):
  """Per cbexp curve: trainable parameters, decode kMAC/pixel, median encode/decode seconds per
  image and the speed-ups against the curve's anchor (anchor time / curve time); BD-rate and
  BD-PSNR (pchip) from ``bd`` when given (0 for the anchor itself).

  Times are the median over the curve's runs of each run's ``eval/*_time_median`` (the median per
  image over the evaluation set). ``anchor_of`` maps curve_id -> anchor curve_id (bd.anchor_map).
  """
  rows = [
    _comparison_row(cid, r, anchor_of.get(cid) or "")
    for cid, r in curves_of(points)
    if r["source"].iloc[0] == "cbexp"
  ]
  table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
  times = table.set_index("curve")
  for kind in ("decode", "encode"):
    column = f"{kind}_time_median_s"
    table[f"{kind}_speedup_vs_anchor"] = [
      times.loc[a, column] / times.loc[c, column] if a in times.index else np.nan
      for c, a in zip(table["curve"], table["anchor"])
    ]
  if bd is not None:
    _add_bd_columns(table, bd.set_index("curve"))
  return table


def _comparison_row(cid, r, anchor):
  return {
    "curve": cid,
    "entropy": r["entropy"].iloc[0],
    "anchor": anchor,
    "rate_points": len(r),
    "lmbdas": " ".join(f"{v:g}" for v in sorted(r["lmbda"].dropna().unique())),
    "seeds_per_point": _single(r["seeds"]),
    "images": _single(r["num_images"]),
    "train_set": "/".join(sorted(set(r["train_set"].astype(str)))),
    "eval_set": "/".join(sorted(set(r["eval_set"].astype(str)))),
    "trainable_parameters": _single(r["trainable_parameters"]),
    "decode_kmac_per_pixel": _single(r["decode_kmac_per_pixel"]),
    "encode_time_median_s": float(np.median(r["encode_time_median"])),
    "decode_time_median_s": float(np.median(r["decode_time_median"])),
  }


def _add_bd_columns(table, by_curve):
  """BD-rate (with its interval) and BD-PSNR of each curve against its anchor (0 for the anchor
  itself), with the BD caveats (overlap, non-monotone curves): they travel with the numbers."""
  pairs = list(zip(table["curve"], table["anchor"]))
  for column in (
    "bd_rate_pchip_pct",
    "bd_rate_pchip_ci_low",
    "bd_rate_pchip_ci_high",
    "bd_psnr_pchip_db",
  ):
    if column in by_curve.columns:
      table[column] = [0.0 if c == a else by_curve[column].get(c, np.nan) for c, a in pairs]
  table["note"] = [
    "" if c == a else by_curve["note"].get(c, "") if "note" in by_curve else "" for c, a in pairs
  ]
  table["note"] = table["note"].fillna("")


def compressai_results(points, curve_id, description, meta):
  """One curve in CompressAI's results schema (compressai/utils/plot, results/image/*/*.json):
  lists sorted by rate; ms-ssim-rgb is MS-SSIM itself (not dB); times are the mean seconds per
  image, as CompressAI's eval_model reports them. Missing values are null."""
  rows = dict(curves_of(points))[curve_id]

  def values(column):
    return [None if pd.isna(v) else float(v) for v in rows[column]]

  return {
    "name": str(rows["curve"].iloc[0]),
    "description": description,
    "meta": {
      **meta,
      "lmbda": values("lmbda"),
      "run_ids": [str(v) for v in rows["run_id"] if not pd.isna(v)],
    },
    "results": {
      "bpp": values("bpp"),
      "psnr-rgb": values("psnr"),
      "ms-ssim-rgb": values("ms_ssim"),
      "encoding_time": values("encode_time_mean"),
      "decoding_time": values("decode_time_mean"),
    },
  }


def _cell(value, digits):
  if isinstance(value, str):
    return value or ""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return NOT_AVAILABLE
  if isinstance(value, (int, np.integer)) or (float(value).is_integer() and abs(value) >= 1000):
    return f"{int(value):,}"
  return f"{value:.{digits}g}"


def to_markdown(table, digits=4):
  """A GitHub Markdown table; NaN shows as "n/a" (nothing is silently filled in)."""
  header = "| " + " | ".join(str(c) for c in table.columns) + " |"
  rule = "|" + "|".join("---" for _ in table.columns) + "|"
  body = [
    "| " + " | ".join(_cell(v, digits).replace("|", "/") for v in row) + " |"
    for row in table.itertuples(index=False)
  ]
  return "\n".join([header, rule] + body) + "\n"


def to_csv(table, path):
  """CSV with NaN written as "n/a", the same honest blank the Markdown shows."""
  table.to_csv(path, index=False, na_rep=NOT_AVAILABLE)
