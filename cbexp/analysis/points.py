"""The one table every analysis step reads: rate-distortion points, one row per (curve, point).

Runs from MLflow (``cbexp.analysis.runs``) and published curves (``cbexp.analysis.reference``)
both become this table, so BD-rate, tables, figures and JSON never care where a point came from.
"""

from cbexp.errors import CbexpError


class AnalysisError(CbexpError, ValueError):
  """Bad input to the analysis (nothing selected, unknown anchor, ...): one-line message."""


# Columns of the points table. Measured quantities are NaN where a source does not have them
# (published curves have no timings; a run may lack MS-SSIM).
POINT_COLUMNS = [
  "curve",  # label shown in legends and tables
  "curve_id",  # stable key: the label for cbexp curves, the bundled id for published ones
  "entropy",  # entropy-model name (cbexp) or family (published)
  "source",  # "cbexp" or "published"
  "kind",  # "measured" for cbexp runs; official / digitized / measured for published
  "run_id",
  "lmbda",
  "bpp",
  "psnr",
  "ms_ssim",
  "ms_ssim_db",
  "encode_time_median",
  "decode_time_median",
  "encode_time_mean",
  "decode_time_mean",
  "num_images",
  "trainable_parameters",
  "decode_kmac_per_pixel",
  "train_set",  # the run's training set (tag dataset) and evaluation set (tag eval_set):
  "eval_set",  #   every table and figure says which images the numbers rest on
  "seed",  # a run's trainer.seed; after averaging over seeds: the seeds, "0,1"
  "seeds",  # how many runs (seeds) the point averages (1 for a single run)
  "bpp_sd",  # standard deviation over those seeds (NaN for one seed)
  "psnr_sd",
  "ms_ssim_db_sd",
]


def curves_of(points):
  """-> list of (curve_id, rows sorted by bpp) in first-appearance order."""
  order = list(dict.fromkeys(points["curve_id"]))
  return [(cid, points[points["curve_id"] == cid].sort_values("bpp")) for cid in order]


def slug(text):
  """A file-name-safe version of a curve label."""
  keep = [ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text)]
  return "".join(keep).strip("_") or "curve"
