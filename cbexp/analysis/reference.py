"""Published Kodak rate-distortion curves bundled with cbexp (published/published_kodak.json).

Each curve keeps the public source it was copied from; ``id`` is the key configs use
(``reference.curves``, ``published.curves``). The numbers are facts from those sources, not
measurements of cbexp.
"""

import importlib.resources
import json

import pandas as pd

from cbexp.analysis.points import POINT_COLUMNS, AnalysisError
from cbexp.evaluation.metrics import ms_ssim_db

REFERENCE_FILE = "published_kodak.json"


def load_published():
  """-> the bundled JSON document (curves with id, label, name, family, kind, source, bpp, psnr
  [, msssim])."""
  text = importlib.resources.files("cbexp.analysis.published").joinpath(REFERENCE_FILE).read_text()
  return json.loads(text)


def published_points(ids):
  """The chosen published curves as a points table (see cbexp.analysis.points)."""
  curves = {c["id"]: c for c in load_published()["curves"]}
  unknown = [i for i in ids if i not in curves]
  if unknown:
    raise AnalysisError(f"unknown published curve id(s) {unknown}; available: {sorted(curves)}")
  rows = []
  for curve_id in ids:
    c = curves[curve_id]
    if len(c["bpp"]) != len(c["psnr"]):
      raise AnalysisError(
        f"published curve {curve_id}: {len(c['bpp'])} rates but {len(c['psnr'])} PSNR values"
      )
    msssim = c.get("msssim", [float("nan")] * len(c["bpp"]))
    for bpp, psnr, ms_ssim in zip(c["bpp"], c["psnr"], msssim):
      rows.append(
        {
          "curve": c["label"],
          "curve_id": curve_id,
          "entropy": c["family"],
          "source": "published",
          "kind": c["kind"],
          "bpp": bpp,
          "psnr": psnr,
          "ms_ssim": ms_ssim,
          "ms_ssim_db": ms_ssim_db(ms_ssim),
        }
      )
  return pd.DataFrame(rows).reindex(columns=POINT_COLUMNS)


def sources(ids):
  """-> {id: (name, source)} for the chosen curves (for captions and reports)."""
  curves = {c["id"]: c for c in load_published()["curves"]}
  return {i: (curves[i]["name"], curves[i]["source"]) for i in ids if i in curves}
