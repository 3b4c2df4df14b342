"""Bjontegaard deltas of every curve against an anchor curve (the ``bjontegaard`` package).

BD-rate integrates log10(rate) over the quality axis, BD-<quality> integrates quality over
log10(rate); each only over the interval where both curves exist, so the overlap of that interval
(as a fraction of the union, the package's own definition) is reported next to each number.
"""

import warnings

import bjontegaard
import numpy as np
import pandas as pd
import scipy.interpolate

from cbexp.analysis.points import AnalysisError, curves_of

# Short names used in column names: bd_<short>_<method>_db.
QUALITY_SHORT = {"psnr": "psnr", "ms_ssim_db": "msssim"}
METHODS = ("pchip", "akima", "cubic")  # the bjontegaard package's interpolations


def overlap(a, b):
  """Length of the intersection of the ranges of a and b over the length of their union."""
  lo, hi = max(np.min(a), np.min(b)), min(np.max(a), np.max(b))
  union = max(np.max(a), np.max(b)) - min(np.min(a), np.min(b))
  return max(hi - lo, 0.0) / union if union > 0 else 1.0


def _increasing(x, y):
  order = np.argsort(x, kind="stable")
  return x[order], y[order]


def bd_pair(rate_anchor, quality_anchor, rate_test, quality_test, method):
  """-> (BD-rate in %, BD-quality in the quality's unit) of test against anchor.

  Points are sorted along each integration axis (the package expects increasing abscissae);
  curves that do not overlap give NaN. Raises ValueError where the interpolator does (e.g. two
  points with the same quality).
  """
  ra, qa, rt, qt = (
    np.asarray(v, dtype=float) for v in (rate_anchor, quality_anchor, rate_test, quality_test)
  )
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # low or no overlap: reported by the caller instead
    qa_s, ra_s = _increasing(qa, ra)
    qt_s, rt_s = _increasing(qt, rt)
    bd_rate = bjontegaard.bd_rate(
      ra_s, qa_s, rt_s, qt_s, method=method, require_matching_points=False, min_overlap=0
    )
    ra_s, qa_s = _increasing(ra, qa)
    rt_s, qt_s = _increasing(rt, qt)
    bd_quality = bjontegaard.bd_psnr(
      ra_s, qa_s, rt_s, qt_s, method=method, require_matching_points=False, min_overlap=0
    )
  return float(bd_rate), float(bd_quality)


def quality_at_rate(rate_anchor, quality_anchor, rate):
  """The anchor's quality at ``rate`` (pchip over log10 rate, as BD-PSNR integrates it); NaN
  outside the anchor's rate range (no extrapolation)."""
  log_rate, quality = _increasing(
    np.log10(np.asarray(rate_anchor, dtype=float)), np.asarray(quality_anchor, dtype=float)
  )
  if not log_rate[0] <= np.log10(rate) <= log_rate[-1]:
    return float("nan")
  return float(scipy.interpolate.PchipInterpolator(log_rate, quality)(np.log10(rate)))


def _finite(rows, quality):
  """Points usable for BD: finite quality (MS-SSIM 1.0 is +inf dB) and positive finite rate."""
  rate, value = rows["bpp"].astype(float), rows[quality].astype(float)
  return rows[np.isfinite(rate) & (rate > 0) & np.isfinite(value)]


def _monotonic(rate, quality):
  order = np.argsort(rate)
  return bool(np.all(np.diff(np.asarray(quality)[order]) > 0))


def resolve_anchor(curves, anchor, test_row, group_by):
  """The anchor curve for one test curve: an exact curve id; else the cbexp curve of entropy
  model ``anchor`` (with the same group_by values as the test curve when there are several)."""
  ids = [cid for cid, _ in curves]
  if anchor in ids:
    return anchor
  candidates = [
    (cid, rows)
    for cid, rows in curves
    if rows["source"].iloc[0] == "cbexp" and rows["entropy"].iloc[0] == anchor
  ]
  if len(candidates) <= 1 or not group_by:
    return candidates[0][0] if candidates else None
  if test_row["source"] != "cbexp":
    return None
  for cid, rows in candidates:
    if all(str(rows[k].iloc[0]) == str(test_row[k]) for k in group_by):
      return cid
  return None


def anchor_map(points, anchor, group_by=()):
  """-> {curve_id: its anchor's curve_id or None}; the anchor maps to itself."""
  curves = curves_of(points)
  if not any(
    cid == anchor or (rows["source"].iloc[0] == "cbexp" and rows["entropy"].iloc[0] == anchor)
    for cid, rows in curves
  ):
    raise AnalysisError(f"anchor {anchor!r} matches no curve; curves: {[c for c, _ in curves]}")
  return {cid: resolve_anchor(curves, anchor, rows.iloc[0], group_by) for cid, rows in curves}


def bd_table(
  points, anchor="charm", quality="psnr", methods=("pchip", "akima"), min_overlap=0.75, group_by=()
):
  """-> one row per curve other than its anchor: BD-rate (%) and BD-quality (dB) per method.

  A curve (or anchor) with fewer than two rate points gets a row whose note says so, instead of
  numbers; so does a pair that does not overlap or that the interpolation rejects. A single-point
  curve gets instead its distance to the anchor at the same rate (delta_*_at_same_rate_db).
  """
  if quality not in QUALITY_SHORT:
    raise AnalysisError(f"BD quality must be one of {sorted(QUALITY_SHORT)}, not {quality!r}")
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise AnalysisError(f"unknown BD interpolation method(s) {unknown}; known: {list(METHODS)}")
  short = QUALITY_SHORT[quality]
  curves = dict(curves_of(points))
  anchors = anchor_map(points, anchor, group_by)
  table = [
    bd_row(rows, anchors[cid], curves.get(anchors[cid]), quality, methods, min_overlap)
    for cid, rows in curves.items()
    if anchors[cid] != cid
  ]
  columns = ["curve", "source", "anchor", "quality", "points", "anchor_points"]
  columns += [f"bd_rate_{m}_pct" for m in methods] + [f"bd_{short}_{m}_db" for m in methods]
  columns += [f"overlap_{short}", "overlap_log_rate", f"delta_{short}_at_same_rate_db", "note"]
  return pd.DataFrame(table, columns=columns)


def bd_row(rows, anchor_id, anchor_rows, quality, methods, min_overlap):
  """One curve (``rows``) against its anchor: the BD values, or a note that says why not."""
  short = QUALITY_SHORT[quality]
  first = rows.iloc[0]
  row = {
    "curve": first["curve"],
    "source": first["source"],
    "anchor": anchor_id,
    "quality": quality,
  }
  for method in methods:
    row[f"bd_rate_{method}_pct"] = np.nan
    row[f"bd_{short}_{method}_db"] = np.nan
  row[f"overlap_{short}"] = np.nan
  row["overlap_log_rate"] = np.nan
  row[f"delta_{short}_at_same_rate_db"] = np.nan
  test = _finite(rows, quality)
  row["points"] = len(test)
  if anchor_id is None:
    row["anchor_points"] = 0
    return {**row, "note": "no anchor curve with the same group values"}
  ref = _finite(anchor_rows, quality)
  row["anchor_points"] = len(ref)
  if len(test) < 2 or len(ref) < 2:
    notes = few_points(row, test, ref, quality)
  else:
    notes = bd_values(row, test, ref, quality, methods, min_overlap)
  return {**row, "note": "; ".join(notes)}


def few_points(row, test, ref, quality):
  """A curve or anchor of fewer than two points: no BD value; a single point gets its distance
  to the anchor at the same rate (into ``row``). -> the notes."""
  which = "curve" if len(test) < 2 else "anchor"
  notes = [f"fewer than two rate points ({which}): no BD value"]
  if len(test) == 1 and len(ref) >= 2:
    at_rate = quality_at_rate(ref["bpp"], ref[quality], test["bpp"].iloc[0])
    delta = test[quality].iloc[0] - at_rate
    row[f"delta_{QUALITY_SHORT[quality]}_at_same_rate_db"] = delta
    if np.isnan(delta):
      notes.append("the point is outside the anchor's rate range")
    else:
      notes.append(f"the point is {delta:+.3g} dB from the anchor at the same rate")
  return notes


def bd_values(row, test, ref, quality, methods, min_overlap):
  """The overlaps and each method's BD pair of two curves of two points or more (into ``row``).
  -> the notes: no overlap, a partial one, a non-monotonic curve, a method that failed."""
  short = QUALITY_SHORT[quality]
  row[f"overlap_{short}"] = overlap(test[quality], ref[quality])
  row["overlap_log_rate"] = overlap(np.log10(test["bpp"]), np.log10(ref["bpp"]))
  if max(row[f"overlap_{short}"], row["overlap_log_rate"]) == 0:
    return ["curves do not overlap: no BD value"]
  notes = []
  if row[f"overlap_{short}"] == 0:
    notes.append(f"{quality} ranges do not overlap: no BD-rate")
  elif row["overlap_log_rate"] == 0:
    notes.append(f"rate ranges do not overlap: no BD-{short}")
  elif min(row[f"overlap_{short}"], row["overlap_log_rate"]) < min_overlap:
    notes.append(f"overlap below {min_overlap:g}: the BD value covers only part of the curves")
  if not (_monotonic(test["bpp"], test[quality]) and _monotonic(ref["bpp"], ref[quality])):
    notes.append(f"{quality} not increasing with rate on some curve: BD is unreliable")
  for method in methods:
    try:
      r, q = bd_pair(ref["bpp"], ref[quality], test["bpp"], test[quality], method)
    except ValueError as e:
      notes.append(f"{method}: {str(e).splitlines()[0]}")
      continue
    row[f"bd_rate_{method}_pct"], row[f"bd_{short}_{method}_db"] = r, q
  return notes
