"""From runs (or published numbers) to the files of an analysis directory, and back to MLflow:
``analyze_runs`` (select, compute, write, report, log) and ``analyze_published``. ``out``
defaults to ``analysis/<sweep id>`` (or ``analysis/<experiment>-<time>``); the MLflow analysis
run (a child of the sweep's parent run, tagged ``sweep_id``) gets exactly these files.
"""

import dataclasses
import datetime
import json
import pathlib

import pandas as pd

from cbexp.analysis import bd as bd_lib
from cbexp.analysis import classical, figures, reference, tables, trajectories, uncertainty
from cbexp.analysis import runs as runs_lib
from cbexp.analysis.points import AnalysisError, slug
from cbexp.tracking import store


class Outputs:
  """The files one analysis writes (and later logs to MLflow: only these, never older files)."""

  def __init__(self, folder):
    self.folder = pathlib.Path(folder)
    self.folder.mkdir(parents=True, exist_ok=True)
    self.paths = []

  def text(self, name, text):
    path = self.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    self.paths.append(path)
    return path

  def table(self, name, table):
    """<name>.csv and <name>.md."""
    tables.to_csv(table, self.folder / f"{name}.csv")
    self.paths.append(self.folder / f"{name}.csv")
    self.text(f"{name}.md", tables.to_markdown(table))

  def add(self, paths):
    self.paths += [pathlib.Path(p) for p in paths]


def write_tables(
  points, outputs, anchor, methods, min_overlap, group_by, samples=None, bootstrap=None, prefix=""
):
  """BD tables (PSNR, and MS-SSIM dB where measured) with bootstrap intervals where per-image
  results exist (``samples``), and the comparison table -> {name: table}. ``prefix``: the BD
  tables of another set of points (``<prefix>bd_psnr``), without a comparison table."""
  written = {}
  for quality, name in (("psnr", f"{prefix}bd_psnr"), ("ms_ssim_db", f"{prefix}bd_msssim")):
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
    if samples:
      anchors = dict(zip(table["curve"], table["anchor"]))
      table = uncertainty.interval_columns(
        table, samples, anchors, quality, bootstrap.confidence, bootstrap.resamples, bootstrap.seed
      )
    outputs.table(name, table)
    written[name] = table
  if not prefix and (points["source"] == "cbexp").any():
    anchor_of = bd_lib.anchor_map(points, anchor, group_by)
    table = tables.comparison_table(points, anchor_of, written.get("bd_psnr"))
    outputs.table("comparison", table)
    written["comparison"] = table
  return written


def write_figures(points, outputs, title, stems=None, xlim=None, caption=None):
  stems = stems or {"psnr": "rd_psnr", "ms_ssim_db": "rd_msssim"}
  paths = []
  for quality, stem in stems.items():
    if quality == "psnr" or figures.has_quality(points, quality):
      figure = figures.rd_figure(points, quality, title, xlim, caption)
      paths += figures.save_figure(figure, outputs.folder, stem)
  outputs.add(paths)
  return paths


def write_report(outputs, heading, lines, written):
  text = [f"# {heading}", ""] + lines + [""]
  for name, table in written.items():
    text += [f"## {name}", "", tables.to_markdown(table)]
  outputs.text("report.md", "\n".join(text))


def resolve_anchor(points, anchor):
  """``auto``: ChARM when the runs have it, else the hyperprior, else the first curve (sorted).
  -> (anchor, a line saying which and why)."""
  if anchor != "auto":
    return anchor, f"- anchor: `{anchor}`"
  ours = points[points["source"] == "cbexp"]
  for candidate in ("charm", "hyperprior"):
    if (ours["entropy"] == candidate).any():
      return candidate, f"- anchor: `{candidate}` (anchor=auto)"
  fallback = sorted(ours["curve_id"])[0]
  return fallback, (
    f"- anchor: `{fallback}` (anchor=auto: no charm or hyperprior curve among "
    f"the runs, so the first curve; BD values are against it)"
  )


def default_out(cfg):
  """Each analysis its own folder: analysis/<sweep id>, else analysis/<experiment>-<time>."""
  if cfg.out:
    return pathlib.Path(cfg.out)
  if cfg.sweep_id:
    return pathlib.Path("analysis") / slug(cfg.sweep_id)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("analysis") / f"{slug(cfg.experiment_name)}-{stamp}"


def bd_summary_lines(table, quality="psnr"):
  """One line per compared curve: BD-rate and BD-quality (pchip) with their bootstrap interval,
  what they rest on, and every caveat of the row (the console, report.md and the notebook)."""
  short = bd_lib.QUALITY_SHORT[quality]
  unit = "PSNR" if quality == "psnr" else "MS-SSIM"

  def value(row, name, column, undefined, digits, suffix):
    estimate = row.get(column)
    if estimate is None or pd.isna(estimate):
      return f"{name} n/a"
    text = f"{name} {estimate:+.{digits}f}{suffix}"
    stem = column.rsplit("_", 1)[0]  # bd_rate_pchip_pct -> bd_rate_pchip (_ci_low, _ci_high)
    low, high = row.get(f"{stem}_ci_low"), row.get(f"{stem}_ci_high")
    if low is not None and pd.notna(low):
      text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    elif row.get(undefined) is not None and pd.notna(row.get(undefined)):
      text += f" (no interval: {row[undefined]:.0%} of the draws have no {name})"
    return text

  lines = []
  for row in table.to_dict("records"):
    head = f"{row['curve']} vs {row['anchor']}:"
    rate = value(row, "BD-rate", "bd_rate_pchip_pct", "draws_without_bd_rate", 2, "%")
    delta = value(row, f"BD-{unit}", f"bd_{short}_pchip_db", f"draws_without_bd_{short}", 3, " dB")
    if "n/a" in rate and "n/a" in delta:
      lines.append(f"{head} no BD value ({row['note']})")
      continue
    text = f"{head} {rate}, {delta} (pchip"
    if row.get("images") is not None and pd.notna(row.get("images")):
      text += (
        f"; 95% bootstrap interval over {int(row['images'])} images and "
        f"{int(row['seeds'])}+{int(row['anchor_seeds'])} seeds"
      )
    elif row.get("source") == "cbexp":
      text += "; no interval: no per-image results"
    text += ")"
    if isinstance(row.get("note"), str) and row["note"]:
      text += f"; caveat: {row['note']}"
    lines.append(text)
  return lines


def sweep_parent(runs, sweep_id):
  """The sweep's parent run id (the analysis run becomes its child), or None."""
  column = "tags.mlflow.parentRunId"
  if not sweep_id or column not in runs.columns:
    return None
  parents = set(runs[column].dropna())
  return parents.pop() if len(parents) == 1 else None


@dataclasses.dataclass
class Selection:
  """The runs an analysis rests on: the store, the MLflow filter, one rate point per run (the
  runs that cannot be one are ``skipped``, with the reason) and the config keys that split
  curves."""

  uri: str
  runs: pd.DataFrame
  filter_string: str
  per_run: pd.DataFrame
  skipped: list
  group_by: list


@dataclasses.dataclass
class Curves:
  """What the runs give: points averaged over seeds (``all_points`` with the published curves
  overlaid), the anchor, per-image bootstrap samples and the image sets the runs used."""

  points: pd.DataFrame
  all_points: pd.DataFrame
  seed_notes: list
  anchor: str
  anchor_line: str
  samples: dict
  per_image: dict
  eval_sets: set
  train_sets: list
  overlay: bool
  classical: object = None  # classical.Classical: codecs on the same images (write_outputs)


def analyze_runs(cfg, cwd=None):
  """The command's main path: select runs, compute the curves, write every output and the
  report, log them to an analysis run.

      <out>/rd_runs.csv                every run used: one rate point per run, with its seed
      <out>/rd_points.csv              the curves: one point per (curve, lambda), the mean over the
                                       runs that differ only in their seed, with the spread
      <out>/rd_psnr.{png,pdf}          bpp vs PSNR (mean curves, +-1 sd over seeds), published
                                       reference curves overlaid on Kodak
      <out>/rd_msssim.{png,pdf}        bpp vs MS-SSIM in dB
      <out>/bd_psnr.{csv,md}           BD-rate / BD-PSNR against the anchor (pchip and akima), with
                                       bootstrap intervals over images and seeds, and caveats
      <out>/bd_msssim.{csv,md}         the same on MS-SSIM (dB)
      <out>/seed_noise.{csv,md}        BD between seeds of one model: the run-to-run noise
      <out>/comparison.{csv,md}        parameters, kMAC/pixel, median times, speed-ups, BD vs anchor
      <out>/compressai/<curve>.json    CompressAI results schema, one file per curve
      <out>/report.md                  what was selected, every caveat and all the tables

  -> dict(out=, points=, per_run=, tables=, skipped=, figures=, analysis_run_id=)."""
  selection = select_runs(cfg, cwd)
  curves = compute_curves(cfg, selection)
  outputs, written, figure_paths = write_outputs(cfg, selection, curves)
  lines = report_lines(cfg, selection, curves, written)
  write_report(outputs, "cbexp analysis", lines, written)
  for line in lines:
    print(line)
  run_id = log_to_mlflow(cfg, selection, curves, outputs, written) if cfg.log_to_mlflow else None
  return {
    "out": outputs.folder,
    "points": curves.all_points,
    "per_run": selection.per_run,
    "tables": written,
    "skipped": selection.skipped,
    "figures": figure_paths,
    "analysis_run_id": run_id,
  }


def select_runs(cfg, cwd=None):
  """The runs of the config's experiment and filters that have an evaluation -> Selection."""
  uri = cfg.tracking.uri or store.default_uri(cwd)
  runs, filter_string = runs_lib.search_runs(
    uri,
    cfg.experiment_name,
    cfg.sweep_id,
    cfg.parent_run_id,
    dict(cfg.tags or {}),
    cfg.filter,
    cfg.status,
  )
  group_by = list(cfg.group_by or [])
  per_run, skipped = runs_lib.runs_to_points(runs, group_by)
  if per_run.empty:
    raise AnalysisError(
      f"no runs with eval/bpp and eval/psnr in experiment {cfg.experiment_name!r}"
      f" matching {filter_string!r} ({len(runs)} runs matched, "
      f"{len(skipped)} left out)"
    )
  return Selection(uri, runs, filter_string, per_run, skipped, group_by)


def compute_curves(cfg, selection):
  """Seed averages, the anchor, bootstrap samples and the published overlay -> Curves."""
  per_run, runs = selection.per_run, selection.runs
  points, seed_notes = uncertainty.average_seeds(per_run, runs)
  anchor, anchor_line = resolve_anchor(points, cfg.anchor)
  samples, per_image = {}, {}
  if cfg.bootstrap.resamples:
    per_image = uncertainty.load_per_image(per_run["run_id"], selection.uri)
    samples = uncertainty.curve_samples(per_run, per_image)
  eval_sets = runs_lib.eval_sets(runs)
  overlay = cfg.reference.overlay
  if overlay == "auto":
    overlay = bool(eval_sets) and all(s.startswith("kodak") for s in eval_sets)
  elif not isinstance(overlay, bool):
    raise AnalysisError(f"reference.overlay must be auto, true or false, not {overlay!r}")
  all_points = points
  if overlay and cfg.reference.curves:
    all_points = pd.concat(
      [points, reference.published_points(list(cfg.reference.curves))], ignore_index=True
    )
  return Curves(
    points,
    all_points,
    seed_notes,
    anchor,
    anchor_line,
    samples,
    per_image,
    eval_sets,
    sorted(set(per_run["train_set"])),
    overlay,
  )


def sets_line(curves):
  """Which images the numbers rest on, for captions, JSON and the report."""
  line = (
    f"trained on {', '.join(curves.train_sets)}; evaluated on "
    f"{', '.join(sorted(curves.eval_sets)) or 'n/a'}"
  )
  if set(curves.train_sets) & curves.eval_sets:  # e.g. the quickstart: the same bundled photos
    line += (
      " (evaluation images the models also trained on: the numbers show that the "
      "pipeline works, not how good the models are)"
    )
  return line


def write_outputs(cfg, selection, curves):
  """CSVs, BD and comparison tables, seed noise, figures and CompressAI JSON into ``out`` ->
  (Outputs, {name: table}, figure paths)."""
  outputs = Outputs(default_out(cfg))
  for name, table in (("rd_runs", selection.per_run), ("rd_points", curves.all_points)):
    table.to_csv(outputs.folder / f"{name}.csv", index=False)
  outputs.add([outputs.folder / "rd_runs.csv", outputs.folder / "rd_points.csv"])
  written = write_tables(
    curves.all_points,
    outputs,
    curves.anchor,
    list(cfg.bd.methods),
    cfg.bd.min_overlap,
    selection.group_by,
    curves.samples,
    cfg.bootstrap,
  )
  written.update(write_classical(cfg, selection, curves, outputs))
  written.update(write_training(cfg, selection, curves, outputs))
  noise = uncertainty.seed_noise_table(curves.samples)
  if not noise.empty:
    outputs.table("seed_noise", noise)
    written["seed_noise"] = noise
  title = cfg.title or cfg.experiment_name + (f" / sweep {cfg.sweep_id}" if cfg.sweep_id else "")
  seeds = sorted(set(curves.points["seeds"]))
  caption = sets_line(curves) + (
    f"; mean of {'/'.join(map(str, seeds))} seeds per point, bars: \u00b11 sd over seeds"
    if max(seeds) > 1
    else ""
  )
  shown = curves.all_points
  if not curves.classical.points.empty:
    shown = pd.concat([shown, curves.classical.points], ignore_index=True)
  figure_paths = write_figures(shown, outputs, title, xlim=cfg.xlim, caption=caption)
  write_compressai_json(cfg, curves, outputs)
  return outputs, written, figure_paths


def write_classical(cfg, selection, curves, outputs):
  """Classical codecs on the runs' evaluation images (config ``classical``; off with
  ``codecs=[]``): their per-image cache and points, CompressAI JSON in compressai/classical/, and
  the BD-rate of every cbexp curve against each codec. -> {"bd_vs_classical": table} or {}."""
  found = classical.for_runs(cfg.get("classical"), selection, curves.eval_sets, outputs.folder)
  curves.classical = found
  outputs.add(found.paths)
  meta = {"source": "classical", "experiment": cfg.experiment_name, "sweep_id": cfg.sweep_id}
  meta["dataset"] = ",".join(sorted(curves.eval_sets)) or None
  for codec, document in classical.compressai_documents(found.points, meta).items():
    outputs.text(f"compressai/classical/{codec}.json", json.dumps(document, indent=2))
  table = classical.bd_table(curves.points, found, curves.samples, cfg.bd, cfg.bootstrap)
  if table.empty:
    return {}
  outputs.table("bd_vs_classical", table)
  return {"bd_vs_classical": table}


def classical_lines(curves, written):
  """The classical notes and one line per (cbexp curve, codec, quality) BD value."""
  found = curves.classical
  lines = [f"- classical: {note}" for note in (found.notes if found is not None else [])]
  table = written.get("bd_vs_classical")
  for quality in ("psnr", "ms_ssim_db") if table is not None else ():
    part = classical.specific_columns(table[table["quality"] == quality], quality)
    lines += [f"- bd_vs_classical: {line}" for line in bd_summary_lines(part, quality)]
  return lines


def write_training(cfg, selection, curves, outputs):
  """The runs' RD points during training, if they logged any (``trainer.rd_every``): every
  point (rd_training.csv), their trajectories against compute (rd_training.{png,pdf}), and the
  curves at equal training compute, with their BD tables (equal_compute_bd_*). -> {name: table}."""
  trajectory, per_image = trajectories.load_trajectories(selection.uri, selection.per_run)
  if trajectory.empty:
    return {}
  trajectory.to_csv(outputs.folder / "rd_training.csv", index=False)
  outputs.add([outputs.folder / "rd_training.csv"])
  caption = (
    f"RD points during training on the validation images of {', '.join(curves.train_sets)} "
    "(never the evaluation images)"
  )
  figure = trajectories.trajectory_figure(trajectory, caption=caption)
  outputs.add(figures.save_figure(figure, outputs.folder, "rd_training"))
  groups = selection.per_run[["run_id", *selection.group_by]] if selection.group_by else None
  per_run, tables_at_budget, budget = trajectories.equal_compute_points(
    trajectory, per_image, groups=groups
  )
  points, _ = uncertainty.average_seeds(per_run, selection.runs)
  samples = uncertainty.curve_samples(per_run, tables_at_budget) if cfg.bootstrap.resamples else {}
  chosen = per_run[["curve", "lmbda", "seed", "step", "cpu_s", "wall_s", "bpp", "psnr"]]
  outputs.table("equal_compute", chosen.assign(budget_cpu_s=budget))
  written = {"equal_compute": chosen}
  try:
    written.update(
      write_tables(
        points,
        outputs,
        curves.anchor,
        list(cfg.bd.methods),
        cfg.bd.min_overlap,
        selection.group_by,
        samples,
        cfg.bootstrap,
        prefix="equal_compute_",
      )
    )
  except AnalysisError as error:  # e.g. the anchor has no RD points during training
    print(f"note: no equal-compute BD tables: {error}")
  return written


def write_compressai_json(cfg, curves, outputs):
  """One CompressAI results file per curve of the runs (compressai/<curve>.json)."""
  points, line = curves.points, sets_line(curves)
  meta = {
    "source": "cbexp",
    "experiment": cfg.experiment_name,
    "sweep_id": cfg.sweep_id,
    "dataset": ",".join(sorted(curves.eval_sets)) or None,
    "train_set": ",".join(curves.train_sets),
    "bpp": "whole .cbx file (header and checksum included) / pixels, mean over images",
    "ms-ssim-rgb": "mean MS-SSIM over images (dB, where shown: of this mean)",
    "timing": "mean seconds per image (eval/encode_time_mean, eval/decode_time_mean)",
    "date": datetime.date.today().isoformat(),
  }
  for cid in dict.fromkeys(points["curve_id"]):
    seeds_of = sorted(set(points.loc[points["curve_id"] == cid, "seeds"]))
    results = tables.compressai_results(
      points,
      cid,
      f"cbexp {cid}, from MLflow runs ({line}; mean over "
      f"{'/'.join(map(str, seeds_of))} seed(s) per point)",
      meta,
    )
    outputs.text(f"compressai/{slug(cid)}.json", json.dumps(results, indent=2))


def report_lines(cfg, selection, curves, written):
  """What was selected and how, every caveat, and the BD summary: report.md and the console."""
  overlay = curves.overlay
  lines = [
    f"- tracking URI: `{selection.uri}`",
    f"- experiment: `{cfg.experiment_name}`",
    f"- run filter: `{selection.filter_string}`",
    f"- runs used: {len(selection.per_run)}, in {len(curves.points)} rate points "
    f"(runs that differ only in `trainer.seed` are averaged)",
    f"- images: {sets_line(curves)}",
    f"- published reference curves overlaid: "
    f"{list(cfg.reference.curves) if overlay else 'no (evaluation set is not Kodak)'}"
    + (" (published: all 24 Kodak images; cbexp: the sets above)" if overlay else ""),
    curves.anchor_line,
  ]
  if curves.samples:
    lines.append(
      f"- intervals: {cfg.bootstrap.confidence:.0%} percentile bootstrap "
      f"({cfg.bootstrap.resamples} resamples, scipy.stats.bootstrap) over the "
      f"evaluation images (paired across models) and each curve's seeds"
    )
  elif cfg.bootstrap.resamples:
    lines.append(
      "- intervals: none ("
      + (
        "no curve has one run per lambda and seed over the same images"
        if curves.per_image
        else "no run has an eval/per_image.csv artifact"
      )
      + ")"
    )
  lines += [f"- skipped run `{rid}`: {why}" for rid, why in selection.skipped]
  lines += [f"- warning: {note}" for note in curves.seed_notes]
  for name, quality in (("bd_psnr", "psnr"), ("bd_msssim", "ms_ssim_db")):
    if name in written:
      lines += [
        f"- {name}: {line}" for line in bd_summary_lines(written[name], quality) if " vs " in line
      ]
  return lines + classical_lines(curves, written)


def log_to_mlflow(cfg, selection, curves, outputs, written):
  """The analysis run: a child of the sweep's parent run, tagged with what it analysed."""
  parent = cfg.parent_run_id or sweep_parent(selection.runs, cfg.sweep_id)
  tags = {
    runs_lib.RUN_TYPE_TAG: "analysis",
    "analysis.filter": selection.filter_string,
    "analysis.num_runs": str(len(selection.per_run)),
    "analysis.anchor": curves.anchor,
    **({"analysis.sweep_id": cfg.sweep_id, "sweep_id": cfg.sweep_id} if cfg.sweep_id else {}),
    **({"mlflow.parentRunId": parent} if parent else {}),
  }
  return log_analysis_run(selection.uri, cfg.experiment_name, outputs, written, tags)


def analyze_published(cfg):
  """The published-study comparison from the bundled numbers alone (no runs, no MLflow)."""
  ids = list(cfg.published.curves)
  points = reference.published_points(ids)
  outputs = Outputs(cfg.out or "analysis/published")
  points.to_csv(outputs.folder / "rd_points.csv", index=False)
  outputs.add([outputs.folder / "rd_points.csv"])
  written = write_tables(
    points, outputs, cfg.published.anchor, list(cfg.bd.methods), cfg.bd.min_overlap, []
  )
  title = cfg.title or "Published results on Kodak (24 images)"
  figure_paths = write_figures(
    points,
    outputs,
    title,
    {"psnr": "published_rd", "ms_ssim_db": "published_rd_msssim"},
    cfg.published.xlim,
  )
  lines = [
    f"- `{i}`: {name} (source: {source})" for i, (name, source) in reference.sources(ids).items()
  ]
  lines.append(f"- anchor: `{cfg.published.anchor}`")
  lines += [f"- bd_psnr: {line}" for line in bd_summary_lines(written["bd_psnr"])]
  write_report(outputs, "Published results on Kodak", lines, written)
  for line in lines:
    print(line)
  return {"out": outputs.folder, "points": points, "tables": written, "figures": figure_paths}


def log_analysis_run(tracking_uri, experiment_name, outputs, written, tags):
  """Logs the files this analysis wrote (``outputs``) as artifacts of a new run named
  "analysis"; -> its run id. BD values and speed-ups are logged as metrics too (metric names
  carry the curve)."""
  from mlflow.tracking import MlflowClient

  client = MlflowClient(tracking_uri)
  experiment = client.get_experiment_by_name(experiment_name)
  run = client.create_run(experiment.experiment_id, run_name="analysis", tags=tags)
  run_id = run.info.run_id
  try:
    for name in ("bd_psnr", "bd_msssim"):
      for row in written.get(name, pd.DataFrame()).to_dict("records"):
        for column, value in row.items():
          if column.startswith("bd_") and isinstance(value, float) and pd.notna(value):
            client.log_metric(run_id, f"{name}/{slug(row['curve'])}/{column}", float(value))
    for row in written.get("comparison", pd.DataFrame()).to_dict("records"):
      for column in ("decode_speedup_vs_anchor", "encode_speedup_vs_anchor"):
        if pd.notna(row[column]):
          client.log_metric(run_id, f"comparison/{slug(row['curve'])}/{column}", float(row[column]))
    for path in outputs.paths:
      folder = path.parent.relative_to(outputs.folder).as_posix()
      client.log_artifact(run_id, str(path), None if folder == "." else folder)
  except Exception:
    client.set_terminated(run_id, "FAILED")
    raise
  client.set_terminated(run_id, "FINISHED")
  return run_id
