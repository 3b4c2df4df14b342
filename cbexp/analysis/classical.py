"""Classical codecs beside the runs' curves: measured on the images the runs were evaluated on,
drawn on every RD figure, and the anchor of a BD-rate per cbexp curve and codec.

The images come from the runs' own record: their ``eval.*`` params (source, path, files,
max_images: the flattened config) name the files, and the digest of the runs' MLflow dataset
input of context "evaluation" (their file names and bytes) must match the files found here.
``classical.images`` names a folder instead. Per-image results are cached in
``<out>/classical_per_image.csv``: a rerun codes only what is new. ``run_folder`` is the
standalone ``cbexp classical``: any image folder, the same rows and files.
"""

import ast
import dataclasses
import datetime
import json
import pathlib
import re

import numpy as np
import pandas as pd

from cbexp.analysis import bd as bd_lib
from cbexp.analysis import tables, uncertainty
from cbexp.analysis.points import POINT_COLUMNS, curves_of
from cbexp.evaluation import classical as codecs_lib

CACHE = "classical_per_image.csv"
POINTS = "classical_points.csv"
SOURCE = "classical"
EVAL_PARAMS = ("source", "path", "files", "max_images")
BPP_DEFINITION = "8 x the bytes of the encoded file / pixels, mean over images"


@dataclasses.dataclass
class Classical:
  """The classical curves of one analysis: points (POINT_COLUMNS + quality), the per-image rows,
  bootstrap samples per codec, one note per codec or step that was skipped, the files written."""

  points: pd.DataFrame
  per_image: pd.DataFrame
  samples: dict
  notes: list
  paths: list


def nothing(notes):
  """No classical curves, with the notes that say why."""
  empty = pd.DataFrame(columns=POINT_COLUMNS + ["quality"])
  return Classical(empty, pd.DataFrame(columns=list(codecs_lib.COLUMNS)), {}, notes, [])


def _param(runs, name):
  """The runs' ``eval.<name>`` param as text; "None" where a run's eval config has no such key
  (``files`` exists only in the configs that pick files)."""
  column = f"params.eval.{name}"
  if column not in runs.columns:
    return pd.Series(["None"] * len(runs), index=runs.index)
  return runs[column].fillna("None").astype(str)


def _none(text):
  return None if text in ("None", "nan", "") else text


def run_eval_images(runs):
  """-> (the image files the runs were evaluated on, None) from their eval.* params, or (None,
  why not): no params (runs of an older cbexp), several sets, files not found here."""
  if "params.eval.source" not in runs.columns:
    return None, "the runs record no eval.* params: set classical.images=<folder>"
  values = [_param(runs, name) for name in EVAL_PARAMS]
  specs = set(zip(*values))
  if len(specs) > 1:
    return None, f"the runs were evaluated on {len(specs)} different image sets"
  source, path, files, max_images = (_none(v) for v in specs.pop())
  from cbexp.images import DataError, config_image_paths

  try:
    files = ast.literal_eval(files) if files else None
    paths = config_image_paths(source, path, "eval", files)
  except (DataError, ValueError, SyntaxError) as error:
    return None, f"the runs' evaluation images are not here ({str(error).splitlines()[0]})"
  return paths[: int(max_images)] if max_images else paths, None


def same_images(paths, uri, run_id):
  """Why ``paths`` are not the images run ``run_id`` was evaluated on (its MLflow dataset
  input of context "evaluation": a digest of file names and bytes), or None. A run without
  that input cannot be checked: None."""
  from mlflow.tracking import MlflowClient

  from cbexp.tracking.runs import image_set_input

  for dataset_input in MlflowClient(uri).get_run(run_id).inputs.dataset_inputs:
    if {t.key: t.value for t in dataset_input.tags}.get("mlflow.data.context") == "evaluation":
      here = image_set_input("here", [str(p) for p in paths], "evaluation").dataset.digest
      if here != dataset_input.dataset.digest:
        return (
          f"the {len(paths)} images found differ from the ones run {run_id} was evaluated on "
          f"(digest {here}, run {dataset_input.dataset.digest})"
        )
  return None


def to_points(summary, eval_set="n/a"):
  """Per-quality rows (``codecs_lib.per_quality``) -> a points table (source "classical", one
  curve per codec, its grid value in ``quality``)."""
  rows = []
  for row in summary.to_dict("records"):
    rows.append(
      {
        **{k: row[k] for k in summary.columns if k in POINT_COLUMNS},
        "curve": row["label"],
        "curve_id": row["codec"],
        "entropy": row["codec"],
        "source": SOURCE,
        "kind": "measured",
        "seeds": 1,
        "seed": "n/a",
        "train_set": "n/a",
        "eval_set": eval_set,
        "quality": row["quality"],
      }
    )
  return pd.DataFrame(rows, columns=POINT_COLUMNS + ["quality"])


def to_samples(per_image):
  """-> {codec: uncertainty.CurveSamples} with the grid values as its "lambdas" and one "seed":
  the paired image bootstrap of the BD-rate against a cbexp curve draws the same images."""
  samples = {}
  for name, rows in per_image.groupby("codec", sort=False):
    grid = rows.pivot_table(index="quality", columns="image", values=["bpp", "psnr", "ms_ssim"])
    images = sorted(rows["image"].unique())
    values = {
      key: grid[key].reindex(columns=images).to_numpy(dtype=float)[:, None, :]
      for key in ("bpp", "psnr", "ms_ssim")
    }
    samples[name] = uncertainty.CurveSamples(name, list(grid.index), ["n/a"], images, values)
  return samples


def measure(settings, paths, folder, cache_name, progress=None):
  """The usable codecs of ``settings`` (codecs, qualities) on ``paths``, reusing the rows cached
  in ``folder/cache_name`` and rewriting it. -> (per-image rows, per-quality rows, notes)."""
  usable, notes = codecs_lib.select(list(settings.codecs))
  grids = codecs_lib.grids([c.name for c in usable], settings.get("qualities"))
  for codec in usable:  # a bad grid is the user's mistake: refused before anything is coded
    codecs_lib.check_grid(codec, grids[codec.name])
  cache = pathlib.Path(folder) / cache_name
  cached, parts = codecs_lib.read_per_image(cache), []
  for codec in usable:  # a codec that fails on an image is a note; the others go on
    try:
      parts.append(codecs_lib.evaluate(paths, [codec], grids, cached, progress))
    except codecs_lib.CodingFailed as error:
      notes.append(f"{error}: skipped")
  columns = list(codecs_lib.COLUMNS)
  per_image = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
  if per_image.empty:
    return per_image, pd.DataFrame(), notes
  cache.parent.mkdir(parents=True, exist_ok=True)
  per_image.to_csv(cache, index=False)
  return per_image, codecs_lib.per_quality(per_image), notes


def for_runs(settings, selection, eval_sets, folder):
  """The classical curves of an analysis (config block ``classical``; None or no codecs: off)
  on the selected runs' evaluation images. -> Classical; never raises for a codec or image set
  that is not available: the notes say what was skipped and why."""
  if settings is None or not settings.codecs:
    return nothing([])
  if settings.get("images"):
    paths, why = codecs_lib.image_paths(settings.images), None
  else:
    paths, why = run_eval_images(selection.runs)
    why = why or same_images(paths, selection.uri, selection.per_run["run_id"].iloc[0])
  if why:
    return nothing([f"no classical curves: {why}"])
  per_image, summary, notes = measure(settings, paths, folder, CACHE)
  if summary.empty:
    return nothing(notes)
  points = to_points(summary, ",".join(sorted(eval_sets)) or "n/a")
  points.to_csv(pathlib.Path(folder) / POINTS, index=False)
  notes.append(
    f"{len(summary)} points of {', '.join(dict.fromkeys(points['curve']))} on "
    f"{per_image['image'].nunique()} images (cached in {CACHE})"
  )
  paths_written = [pathlib.Path(folder) / CACHE, pathlib.Path(folder) / POINTS]
  return Classical(points, per_image, to_samples(per_image), notes, paths_written)


def bd_table(points, classical, samples, bd, bootstrap=None):
  """BD-rate and BD-quality (psnr, then MS-SSIM dB) of every cbexp curve of ``points`` against
  each classical codec, with the paired image bootstrap where both have per-image results on
  the same images. One row per (cbexp curve, codec, quality); columns as ``bd.bd_table``'s."""
  ours = curves_of(points[points["source"] == "cbexp"])
  parts = []
  for quality in ("psnr", "ms_ssim_db"):
    for codec, rows in curves_of(classical.points):
      if not np.isfinite(rows[quality].astype(float)).any():
        continue
      table = pd.DataFrame(
        [bd_lib.bd_row(r, codec, rows, quality, bd.methods, bd.min_overlap) for _, r in ours]
      )
      anchor = classical.samples.get(codec)
      paired = {c: s for c, s in samples.items() if anchor and s.images == anchor.images}
      if paired and bootstrap is not None and bootstrap.resamples:
        table = uncertainty.interval_columns(
          table,
          {**paired, codec: anchor},
          {c: codec for c in table["curve"]},
          quality,
          bootstrap.confidence,
          bootstrap.resamples,
          bootstrap.seed,
        )
      parts.append(generic_columns(table, quality))
  return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def generic_columns(table, quality):
  """``bd_psnr_pchip_db`` -> ``bd_quality_pchip_db`` (and overlap_, delta_, interval columns):
  PSNR and MS-SSIM rows share one set of columns; ``quality`` says which."""
  short = bd_lib.QUALITY_SHORT[quality]
  return table.rename(columns=lambda c: re.sub(rf"(?<=_){short}(?=_|$)", "quality", c))


def specific_columns(table, quality):
  """The inverse of ``generic_columns``: the column names of ``bd.bd_table`` for ``quality``."""
  short = bd_lib.QUALITY_SHORT[quality]
  return table.rename(columns=lambda c: re.sub(r"(?<=_)quality(?=_|$)", short, c))


def compressai_documents(points, meta):
  """{codec: CompressAI results document} (``tables.compressai_results``): the grid values in
  ``meta.quality``, the codec's settings and library in ``meta.encoder``."""
  documents = {}
  for codec, rows in curves_of(points):
    codec_meta = {
      **meta,
      "codec": codec,
      "encoder": f"{codecs_lib.CODECS[codec].settings}; {codecs_lib.CODECS[codec].library()}",
      "bpp": BPP_DEFINITION,
      "timing": "mean seconds per image in process (bpgenc/bpgdec: with PNG files in and out)",
      "date": datetime.date.today().isoformat(),
    }
    document = tables.compressai_results(
      points, codec, f"{rows['curve'].iloc[0]}, classical codec measured by cbexp", codec_meta
    )
    document["meta"].pop("run_ids")
    document["meta"].pop("lmbda")
    document["meta"]["quality"] = [float(v) for v in rows["quality"]]
    documents[codec] = document
  return documents


def write_documents(documents, folder):
  """Writes ``<folder>/<codec>.json`` per document. -> the paths."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for codec, document in documents.items():
    paths.append(folder / f"{codec}.json")
    paths[-1].write_text(json.dumps(document, indent=2))
  return paths


def run_folder(cfg, progress=None):
  """``cbexp classical``: the codecs of ``cfg`` on the images of ``cfg.images``; writes
  ``<out>/per_image.csv`` (the cache of a rerun), ``per_quality.csv`` and
  ``compressai/<codec>.json``. -> dict(out, per_image, per_quality, notes, files)."""
  paths = codecs_lib.image_paths(cfg.images, cfg.max_images)
  out = pathlib.Path(cfg.out)
  per_image, summary, notes = measure(cfg, paths, out, "per_image.csv", progress)
  files = []
  if not summary.empty:
    summary.to_csv(out / "per_quality.csv", index=False)
    meta = {"source": SOURCE, "dataset": str(cfg.images), "images": len(paths)}
    documents = compressai_documents(to_points(summary, str(cfg.images)), meta)
    files = [out / "per_image.csv", out / "per_quality.csv"]
    files += write_documents(documents, out / "compressai")
  return {
    "out": out,
    "per_image": per_image,
    "per_quality": summary,
    "notes": notes,
    "files": files,
  }
