"""From runs (or published numbers) to the files of an analysis directory, and back to MLflow.

    <out>/rd_points.csv              every rate point (one per run), with its run id and metrics
    <out>/rd_psnr.{png,pdf}          bpp vs PSNR, published reference curves overlaid on Kodak
    <out>/rd_msssim.{png,pdf}        bpp vs MS-SSIM in dB
    <out>/bd_psnr.{csv,md}           BD-rate / BD-PSNR against the anchor (pchip and akima)
    <out>/bd_msssim.{csv,md}         the same on MS-SSIM (dB)
    <out>/comparison.{csv,md}        parameters, kMAC/pixel, median times, speed-ups, BD vs anchor
    <out>/compressai/<curve>.json    CompressAI results schema, one file per curve
    <out>/report.md                  what was selected and all the tables
"""
import datetime
import json
import pathlib

import pandas as pd

from cbexp.analysis import bd as bd_lib
from cbexp.analysis import figures, reference, runs as runs_lib, tables
from cbexp.analysis.points import AnalysisError, slug


def write_tables(points, out, anchor, methods, min_overlap, group_by):
  """BD tables (PSNR, and MS-SSIM dB where measured) and the comparison table -> {name: table}."""
  written = {}
  for quality, name in (("psnr", "bd_psnr"), ("ms_ssim_db", "bd_msssim")):
    measured = points.dropna(subset=[quality])
    if measured.empty:
      continue
    try:
      table = bd_lib.bd_table(measured, anchor, quality, methods, min_overlap, group_by)
    except AnalysisError:
      if quality == "psnr":
        raise
      print(f"note: no {name} table: the anchor {anchor!r} has no {quality} values")
      continue
    tables.to_csv(table, out / f"{name}.csv")
    (out / f"{name}.md").write_text(tables.to_markdown(table))
    written[name] = table
  if (points["source"] == "cbexp").any():
    anchor_of = bd_lib.anchor_map(points, anchor, group_by)
    table = tables.comparison_table(points, anchor_of, written.get("bd_psnr"))
    tables.to_csv(table, out / "comparison.csv")
    (out / "comparison.md").write_text(tables.to_markdown(table))
    written["comparison"] = table
  return written


def write_figures(points, out, title, stems=None, xlim=None):
  stems = stems or {"psnr": "rd_psnr", "ms_ssim_db": "rd_msssim"}
  paths = []
  for quality, stem in stems.items():
    if quality == "psnr" or figures.has_quality(points, quality):
      figure = figures.rd_figure(points, quality, title, xlim)
      paths += figures.save_figure(figure, out, stem)
  return paths


def write_report(out, heading, lines, written):
  text = [f"# {heading}", ""] + lines + [""]
  for name, table in written.items():
    text += [f"## {name}", "", tables.to_markdown(table)]
  (out / "report.md").write_text("\n".join(text))


def analyze_runs(cfg, cwd=None):
  """The CLI's main path: select runs, write every output, log them to an analysis run.

  -> dict(out=, points=, tables=, skipped=, analysis_run_id=)."""
  uri = cfg.tracking.uri or runs_lib.default_tracking_uri(cwd)
  tags = dict(cfg.tags or {})
  runs, filter_string = runs_lib.search_runs(uri, cfg.experiment_name, cfg.sweep_id,
                                             cfg.parent_run_id, tags, cfg.filter, cfg.status)
  group_by = list(cfg.group_by or [])
  points, skipped = runs_lib.runs_to_points(runs, group_by)
  if points.empty:
    raise AnalysisError(f"no runs with eval/bpp and eval/psnr in experiment {cfg.experiment_name!r}"
                        f" matching {filter_string!r} ({len(runs)} runs matched, "
                        f"{len(skipped)} without evaluation)")
  eval_sets = runs_lib.eval_sets(runs)
  overlay = cfg.reference.overlay
  if overlay == "auto":
    overlay = eval_sets == {"kodak"}
  elif not isinstance(overlay, bool):
    raise AnalysisError(f"reference.overlay must be auto, true or false, not {overlay!r}")
  all_points = points
  if overlay and cfg.reference.curves:
    all_points = pd.concat([points, reference.published_points(list(cfg.reference.curves))],
                           ignore_index=True)

  out = pathlib.Path(cfg.out)
  out.mkdir(parents=True, exist_ok=True)
  all_points.to_csv(out / "rd_points.csv", index=False)
  written = write_tables(all_points, out, cfg.anchor, list(cfg.bd.methods), cfg.bd.min_overlap,
                         group_by)
  title = cfg.title or cfg.experiment_name + (f" / sweep {cfg.sweep_id}" if cfg.sweep_id else "")
  figure_paths = write_figures(all_points, out, title, xlim=cfg.xlim)

  meta = {"source": "cbexp", "experiment": cfg.experiment_name, "sweep_id": cfg.sweep_id,
          "dataset": ",".join(sorted(eval_sets)) or None,
          "timing": "mean seconds per image (eval/encode_time_mean, eval/decode_time_mean)",
          "date": datetime.date.today().isoformat()}
  (out / "compressai").mkdir(exist_ok=True)
  for cid in dict.fromkeys(points["curve_id"]):
    results = tables.compressai_results(points, cid, f"cbexp {cid}, from MLflow runs", meta)
    (out / "compressai" / f"{slug(cid)}.json").write_text(json.dumps(results, indent=2))

  lines = [f"- tracking URI: `{uri}`", f"- experiment: `{cfg.experiment_name}`",
           f"- run filter: `{filter_string}`", f"- runs used: {len(points)}",
           f"- evaluation sets: {sorted(eval_sets) or 'not tagged'}",
           f"- published reference curves overlaid: "
           f"{list(cfg.reference.curves) if overlay else 'no (evaluation set is not Kodak)'}",
           f"- anchor: `{cfg.anchor}`"]
  lines += [f"- skipped run `{rid}`: {why}" for rid, why in skipped]
  repeated = points.groupby(["curve", "lmbda"]).size()
  lines += [f"- warning: curve `{curve}` has {n} runs at lmbda {lmbda:g} (all are used; "
            f"select one sweep with sweep_id=...)"
            for (curve, lmbda), n in repeated.items() if n > 1]
  write_report(out, "cbexp analysis", lines, written)
  for line in lines:
    print(line)

  run_id = None
  if cfg.log_to_mlflow:
    run_id = log_analysis_run(uri, cfg.experiment_name, out, written, {
        runs_lib.RUN_TYPE_TAG: "analysis", "analysis.filter": filter_string,
        "analysis.num_runs": str(len(points)), "analysis.anchor": cfg.anchor,
        **({"analysis.sweep_id": cfg.sweep_id} if cfg.sweep_id else {}),
        **({"mlflow.parentRunId": cfg.parent_run_id} if cfg.parent_run_id else {})})
  return {"out": out, "points": all_points, "tables": written, "skipped": skipped,
          "figures": figure_paths, "analysis_run_id": run_id}


def analyze_published(cfg):
  """The published-study comparison from the bundled numbers alone (no runs, no MLflow)."""
  ids = list(cfg.published.curves)
  points = reference.published_points(ids)
  out = pathlib.Path(cfg.out)
  out.mkdir(parents=True, exist_ok=True)
  points.to_csv(out / "rd_points.csv", index=False)
  written = write_tables(points, out, cfg.published.anchor, list(cfg.bd.methods),
                         cfg.bd.min_overlap, [])
  title = cfg.title or "Published results on Kodak (24 images)"
  figure_paths = write_figures(points, out, title,
                               {"psnr": "published_rd", "ms_ssim_db": "published_rd_msssim"},
                               cfg.published.xlim)
  lines = [f"- `{i}`: {name} (source: {source})" for i, (name, source)
           in reference.sources(ids).items()]
  lines.append(f"- anchor: `{cfg.published.anchor}`")
  write_report(out, "Published results on Kodak", lines, written)
  for line in lines:
    print(line)
  return {"out": out, "points": points, "tables": written, "figures": figure_paths}


def log_analysis_run(tracking_uri, experiment_name, out, written, tags):
  """Logs the analysis directory as artifacts of a new run named "analysis"; -> its run id.
  BD values and speed-ups are logged as metrics too (metric names carry the curve)."""
  from mlflow.tracking import MlflowClient
  client = MlflowClient(tracking_uri)
  experiment = client.get_experiment_by_name(experiment_name)
  run = client.create_run(experiment.experiment_id, run_name="analysis", tags=tags)
  run_id = run.info.run_id
  try:
    for name in ("bd_psnr", "bd_msssim"):
      for row in written.get(name, pd.DataFrame()).to_dict("records"):
        for column, value in row.items():
          if column.startswith("bd_") and pd.notna(value):
            client.log_metric(run_id, f"{name}/{slug(row['curve'])}/{column}", float(value))
    for row in written.get("comparison", pd.DataFrame()).to_dict("records"):
      for column in ("decode_speedup_vs_anchor", "encode_speedup_vs_anchor"):
        if pd.notna(row[column]):
          client.log_metric(run_id, f"comparison/{slug(row['curve'])}/{column}", float(row[column]))
    client.log_artifacts(run_id, str(out))
  except Exception:
    client.set_terminated(run_id, "FAILED")
    raise
  client.set_terminated(run_id, "FINISHED")
  return run_id
