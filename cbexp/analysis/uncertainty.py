"""Seeds and images: mean RD curves with their spread, and bootstrap intervals for BD values.

A curve's point at one lambda is the mean over its seeds (runs that differ only in
``trainer.seed``) of each run's mean over the evaluation images (its eval/per_image.csv).
Intervals resample both (``scipy.stats.bootstrap``, percentile): one image draw shared by every
curve (paired across models), each curve's seeds on their own; each names what it rests on.
"""

import warnings

import numpy as np
import pandas as pd

from cbexp.analysis.bd import bd_pair
from cbexp.analysis.points import AnalysisError
from cbexp.evaluation.metrics import ms_ssim_db

PER_IMAGE_ARTIFACT = "eval/per_image.csv"
# Largest share of bootstrap draws without a BD value for which an interval is still given.
MAX_UNDEFINED = 0.05
QUALITIES = ("psnr", "ms_ssim")


# Params that differ between runs of one experiment without making them different experiments.
NOT_A_CONDITION = ("trainer.seed", "run_dir", "tracking.uri", "tracking.experiment")
MEAN_COLUMNS = ("bpp", "psnr", "ms_ssim", "encode_time_mean", "decode_time_mean")
MEDIAN_COLUMNS = ("encode_time_median", "decode_time_median")


def average_seeds(per_run, runs=None):
  """Per-run points -> one point per (curve, lambda): the mean over the runs that differ only in
  their seed (MS-SSIM dB of the mean MS-SSIM; times: median of the runs' medians), with
  ``seeds`` and the spread over seeds (``*_sd``). -> (points, notes): a note for every group
  whose runs differ in more than the seed (``runs``: the search_runs frame, for their params) or
  repeat a seed."""
  if per_run.empty:
    return per_run.copy(), []
  params = [
    c
    for c in (runs.columns if runs is not None else [])
    if c.startswith("params.") and c[len("params.") :] not in NOT_A_CONDITION
  ]
  by_run = runs.set_index("run_id") if runs is not None else None
  rows, notes = [], []
  for (curve_id, lmbda), group in per_run.groupby(["curve_id", "lmbda"], sort=False, dropna=False):
    row = group.iloc[0].to_dict()
    seeds = [str(s) for s in group["seed"]]
    if len(group) > 1:
      if len(set(seeds)) < len(seeds):
        notes.append(
          f"curve `{row['curve']}` has {len(group)} runs at lmbda {lmbda:g} with "
          f"seeds {', '.join(seeds)}: a seed is repeated (two sweeps? select one "
          f"with sweep_id=...); all are averaged"
        )
      if by_run is not None and params:
        conditions = by_run.loc[list(group["run_id"]), params]
        differing = [c[len("params.") :] for c in params if conditions[c].astype(str).nunique() > 1]
        if differing:
          notes.append(
            f"curve `{row['curve']}` at lmbda {lmbda:g}: its runs differ in more than "
            f"the seed ({', '.join(differing[:5])}); they are averaged as seeds "
            f"(split them with group_by=[{differing[0]}])"
          )
    for column in MEAN_COLUMNS:
      row[column] = float(group[column].mean())
    for column in MEDIAN_COLUMNS:
      row[column] = float(group[column].median())
    row["ms_ssim_db"] = ms_ssim_db(row["ms_ssim"])
    spread = len(group) > 1
    row["bpp_sd"] = float(group["bpp"].std()) if spread else np.nan
    row["psnr_sd"] = float(group["psnr"].std()) if spread else np.nan
    row["ms_ssim_db_sd"] = (
      float(ms_ssim_db(group["ms_ssim"].to_numpy()).std(ddof=1)) if spread else np.nan
    )
    row["seeds"] = len(group)
    row["seed"] = ",".join(seeds)
    row["run_id"] = ",".join(group["run_id"])
    images = set(group["num_images"].dropna())
    row["num_images"] = images.pop() if len(images) == 1 else np.nan
    rows.append(row)
  columns = list(dict.fromkeys([*per_run.columns, "seeds", "bpp_sd", "psnr_sd", "ms_ssim_db_sd"]))
  return pd.DataFrame(rows, columns=columns), notes


def load_per_image(run_ids, tracking_uri):
  """-> {run_id: per-image DataFrame} for the runs whose ``eval/per_image.csv`` can be read."""
  import os

  os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
  import mlflow

  tables = {}
  for run_id in run_ids:
    try:
      path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=PER_IMAGE_ARTIFACT, tracking_uri=tracking_uri
      )
      tables[run_id] = pd.read_csv(path)
    except Exception:  # an old run, a run logged elsewhere: no interval for its curve
      continue
  return tables


class CurveSamples:
  """One curve's per-image values as arrays [lambda, seed, image] (bpp, psnr, ms_ssim)."""

  def __init__(self, curve_id, lmbdas, seeds, images, values):
    self.curve_id, self.lmbdas, self.seeds, self.images = curve_id, lmbdas, seeds, images
    self.values = values  # {"bpp": array, "psnr": array, "ms_ssim": array}

  def mean_curve(self, image_index=None, seed_index=None, quality="psnr"):
    """-> (bpp, quality) per lambda: the mean over the chosen seeds of the mean over the chosen
    images (indices may repeat: bootstrap draws). MS-SSIM in dB is that of the mean MS-SSIM."""

    def mean(array):
      if seed_index is not None:
        array = array[:, seed_index, :]
      if image_index is not None:
        array = array[:, :, image_index]
      return array.mean(axis=(1, 2))

    rate = mean(self.values["bpp"])
    if quality == "ms_ssim_db":
      return rate, ms_ssim_db(mean(self.values["ms_ssim"]))
    return rate, mean(self.values[quality])


def curve_samples(points_per_run, per_image):
  """-> {curve_id: CurveSamples} for the curves whose runs all have per-image tables over the same
  images and the same seeds at every lambda; the others are left out (no interval)."""
  samples = {}
  for curve_id, runs in points_per_run.groupby("curve_id", sort=False):
    if not all(rid in per_image for rid in runs["run_id"]):
      continue
    lmbdas = sorted(runs["lmbda"].unique())
    seeds = sorted(runs["seed"].unique(), key=str)
    images = None
    values = {k: np.full((len(lmbdas), len(seeds), 0), np.nan) for k in ("bpp",) + QUALITIES}
    grid = {}
    complete = True
    for run in runs.itertuples():
      table = per_image[run.run_id].sort_values("image")
      names = tuple(table["image"])
      if images is None:
        images = names
      if names != images or (run.lmbda, run.seed) in grid:
        complete = False  # other images, or the same seed twice at one lambda
        break
      grid[(run.lmbda, run.seed)] = table
    if not complete or len(grid) != len(lmbdas) * len(seeds):
      continue
    for key in values:
      values[key] = np.array(
        [[grid[(lmbda, s)][key].to_numpy(dtype=float) for s in seeds] for lmbda in lmbdas]
      )
    samples[curve_id] = CurveSamples(curve_id, lmbdas, seeds, list(images), values)
  return samples


def _bd_of(test, anchor, image_index, test_seeds, anchor_seeds, quality):
  rate_t, quality_t = test.mean_curve(image_index, test_seeds, quality)
  rate_a, quality_a = anchor.mean_curve(image_index, anchor_seeds, quality)
  try:
    return np.array(bd_pair(rate_a, quality_a, rate_t, quality_t, "pchip"))
  except ValueError:  # a resampled curve the interpolation rejects (two equal qualities)
    return np.array([np.nan, np.nan])


def bd_interval(test, anchor, quality="psnr", confidence=0.95, resamples=1000, seed=0):
  """Bootstrap interval of (BD-rate %, BD-quality dB) of ``test`` against ``anchor`` (pchip).

  -> dict(bd_rate, bd_quality (point estimates on all data), bd_rate_low/high,
  bd_quality_low/high, seeds_test, seeds_anchor, images, resampled (what was resampled))."""
  if test.images != anchor.images:
    raise AnalysisError(
      f"{test.curve_id} and {anchor.curve_id} were evaluated on different "
      f"images: no paired bootstrap"
    )
  estimate = _bd_of(test, anchor, None, None, None, quality)
  result = {
    "bd_rate": estimate[0],
    "bd_quality": estimate[1],
    "seeds_test": len(test.seeds),
    "seeds_anchor": len(anchor.seeds),
    "images": len(test.images),
    "resamples": resamples,
  }
  # scipy resamples every sample independently (paired=False); a sample needs >= 2 values.
  sizes = {"images": len(test.images), "test seeds": len(test.seeds)}
  sizes["anchor seeds"] = len(anchor.seeds)
  roles = [role for role, size in sizes.items() if size >= 2]
  result["resampled"] = ", ".join(roles) or "nothing (one image, one seed)"

  def statistic(*drawn):
    drawn = dict(zip(roles, drawn))
    return _bd_of(
      test, anchor, drawn.get("images"), drawn.get("test seeds"), drawn.get("anchor seeds"), quality
    )

  low = high = undefined = np.array([np.nan, np.nan])
  if roles and np.any(np.isfinite(estimate)):
    samples = tuple(np.arange(sizes[role]) for role in roles)
    draws = _bootstrap_draws(samples, statistic, confidence, resamples, seed)
    low, high, undefined = _percentile_interval(draws, confidence)
  result.update(
    bd_rate_low=low[0],
    bd_rate_high=high[0],
    bd_quality_low=low[1],
    bd_quality_high=high[1],
    bd_rate_undefined=undefined[0],
    bd_quality_undefined=undefined[1],
  )
  return result


def _bootstrap_draws(samples, statistic, confidence, resamples, seed):
  """-> the bootstrap distribution of ``statistic`` (BD-rate, BD-quality): [2, resamples]."""
  import scipy.stats

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # draws without a BD value: counted by the caller
    interval = scipy.stats.bootstrap(
      samples,
      statistic,
      vectorized=False,
      paired=False,
      n_resamples=resamples,
      confidence_level=confidence,
      method="percentile",
      random_state=np.random.default_rng(seed),
    )
  return np.asarray(interval.bootstrap_distribution, dtype=float)


def _percentile_interval(draws, confidence):
  """-> (low, high, share of draws without a value) of each row of ``draws``.

  A draw has no BD value where its two mean curves do not overlap on the integration axis (flat
  curves: BD-rate). The percentile interval is taken over the draws that have one, and only when
  at most MAX_UNDEFINED of them lack it; the share is reported either way."""
  undefined = np.mean(~np.isfinite(draws), axis=-1)
  tail = (1 - confidence) / 2 * 100
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # all-NaN rows
    low = np.nanpercentile(draws, tail, axis=-1)
    high = np.nanpercentile(draws, 100 - tail, axis=-1)
  low = np.where(undefined <= MAX_UNDEFINED, low, np.nan)
  high = np.where(undefined <= MAX_UNDEFINED, high, np.nan)
  return low, high, undefined


def interval_columns(bd, samples, anchors, quality="psnr", confidence=0.95, resamples=1000, seed=0):
  """Adds the bootstrap interval, seeds and images to each row of a BD table (bd.bd_table)."""
  short = "psnr" if quality == "psnr" else "msssim"
  columns = {
    "seeds": [],
    "anchor_seeds": [],
    "images": [],
    "bd_rate_pchip_ci_low": [],
    "bd_rate_pchip_ci_high": [],
    f"bd_{short}_pchip_ci_low": [],
    f"bd_{short}_pchip_ci_high": [],
    "draws_without_bd_rate": [],
    f"draws_without_bd_{short}": [],
    "resampled": [],
  }
  for row in bd.itertuples():
    test, anchor = samples.get(row.curve), samples.get(anchors.get(row.curve))
    if (
      test is None
      or anchor is None
      or (
        np.isnan(getattr(row, "bd_rate_pchip_pct", np.nan))
        and np.isnan(getattr(row, f"bd_{short}_pchip_db", np.nan))
      )
    ):
      for values in columns.values():
        values.append(
          np.nan
          if values is not columns["resampled"]
          else "no interval (no per-image results for this pair)"
        )
      continue
    r = bd_interval(test, anchor, quality, confidence, resamples, seed)
    for key, value in (
      ("seeds", r["seeds_test"]),
      ("anchor_seeds", r["seeds_anchor"]),
      ("images", r["images"]),
      ("bd_rate_pchip_ci_low", r["bd_rate_low"]),
      ("bd_rate_pchip_ci_high", r["bd_rate_high"]),
      (f"bd_{short}_pchip_ci_low", r["bd_quality_low"]),
      (f"bd_{short}_pchip_ci_high", r["bd_quality_high"]),
      ("draws_without_bd_rate", r["bd_rate_undefined"]),
      (f"draws_without_bd_{short}", r["bd_quality_undefined"]),
      ("resampled", r["resampled"]),
    ):
      columns[key].append(value)
  table = bd.copy()
  for key, values in columns.items():
    table[key] = values
  return table


def seed_noise_table(samples, quality="psnr"):
  """Run-to-run noise: for every curve with several seeds, the BD-rate and BD-quality of each
  seed's curve against the first seed's, on all images. Compare with the BD between models."""
  rows = []
  for curve_id, s in samples.items():
    if len(s.seeds) < 2:
      continue
    for j in range(1, len(s.seeds)):
      r = _bd_of(s, s, None, [j], [0], quality)
      rows.append(
        {
          "curve": curve_id,
          "seed": s.seeds[j],
          "against_seed": s.seeds[0],
          "images": len(s.images),
          "bd_rate_pchip_pct": r[0],
          f"bd_{'psnr' if quality == 'psnr' else 'msssim'}_pchip_db": r[1],
        }
      )
  return pd.DataFrame(rows)
