"""The decode conformance matrix's report (``cbexp.evaluation.conformance`` measures): the
summary per model, numerics and configuration, the CSV and JSON files, the printed table and
the MLflow runs."""

import dataclasses
import json
import pathlib

#: The outcome counts of one model in one configuration: the printed table's and MLflow's.
COUNT_COLUMNS = (
  "images_identical",
  "images_corrupted",
  "images_refused",
  "images_wrong",
  "images_pixels_differ",
  "mismatches_per_million",
  "index_mismatches",
  "symbol_mismatches",
  "max_abs_pixel_diff",
)


def summarize(per_image):
  """-> (per-image DataFrame, summary: one row per model, numerics and configuration). A
  different image whose symbols are all right (no teacher-forced mismatch, so the real decoder
  stayed in sync) only has pixels the float synthesis rounded otherwise; with mismatches it is
  a wrong image, decoded without an error. Corrupted = refused + wrong."""
  import pandas as pd

  frame = pd.DataFrame(per_image)
  rows = []
  for (_, numerics, config), group in frame.groupby(["key", "numerics", "config"], sort=False):
    different = group.outcome == "different"
    wrong = different & (group.positions_mismatched > 0)
    symbols = int(group.symbols.sum())
    rows.append(
      {
        "model": group.model.iloc[0],
        "lmbda": group.lmbda.iloc[0],
        "numerics": numerics,
        "config": config,
        "trained": bool(group.trained.iloc[0]),
        "images": len(group),
        "images_identical": int((group.outcome == "identical").sum()),
        "images_corrupted": int((wrong | (group.outcome == "refused")).sum()),
        "images_refused": int((group.outcome == "refused").sum()),
        "images_wrong": int(wrong.sum()),
        "images_pixels_differ": int((different & (group.positions_mismatched == 0)).sum()),
        "images_with_mismatches": int((group.positions_mismatched > 0).sum()),
        "symbols": symbols,
        "mismatches_per_million": 1e6 * group.positions_mismatched.sum() / max(symbols, 1),
        "index_mismatches": int(group.index_mismatches.sum()),
        "symbol_mismatches": int(group.symbol_mismatches.sum()),
        "max_abs_mean_diff": float(group.max_abs_mean_diff.max()),
        "max_abs_pixel_diff": int(group.max_abs_pixel_diff.max()),
        "decode_s_median": float(group.decode_s.median()),
        "errors": "; ".join(sorted(set(e for e in group.error if e)))[:500],
        "model_ref": group.model_ref.iloc[0],
      }
    )
  return frame, pd.DataFrame(rows)


def print_summary(summary, notes):
  columns = ["model", "lmbda", "numerics", "config", "images", *COUNT_COLUMNS]
  print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
  for note in notes:
    print(f"note: {note}")


def log_mlflow(opts, summary, environments, info, paths):
  import mlflow

  mlflow.set_tracking_uri(opts.mlflow)
  mlflow.set_experiment(opts.experiment)
  for _, row in summary.iterrows():
    config = environments[row.config]
    with mlflow.start_run(run_name=f"conformance-{row.model}-{row.numerics}-{row.config}"):
      mlflow.set_tags(
        {
          "kind": "conformance",
          "entropy": row.model,
          "cpu": info["cpu"],
          "tf_version": info["tf_version"],
        }
      )
      mlflow.log_params(
        {
          "model": row.model,
          "lmbda": row.lmbda,
          "numerics": row.numerics,
          "config": row.config,
          "config_about": config.about,
          "config_env": json.dumps(config.env),
          "config_threads": config.threads,
          "images": row.images,
          "model_ref": row.model_ref[:250],
          "command": info["command"][:250],
        }
      )
      mlflow.log_metrics(
        {f"conformance/{k}": float(row[k]) for k in (*COUNT_COLUMNS, "decode_s_median", "symbols")}
      )
      for path in paths:
        mlflow.log_artifact(str(path))


def write_report(opts, per_image, environments, images, report):
  """conformance.csv, conformance_per_image.csv and conformance.json in ``opts.out``; prints
  the summary; logs to MLflow (``opts.mlflow``, ``opts.experiment``). ``environments``: {name:
  DecodeEnvironment} of the reference and the decode configurations; ``images``: (name, path)
  pairs; ``report``: command, machine, wall times, notes. -> the summary."""
  frame, summary = summarize(per_image)
  out = pathlib.Path(opts.out)
  out.mkdir(parents=True, exist_ok=True)
  summary_path, per_image_path = out / "conformance.csv", out / "conformance_per_image.csv"
  summary.to_csv(summary_path, index=False)
  frame.to_csv(per_image_path, index=False)
  json_path = out / "conformance.json"
  json_path.write_text(
    json.dumps(
      {
        **report,
        "configs": {name: dataclasses.asdict(env) for name, env in environments.items()},
        "images": [n for n, _ in images],
        "summary": summary.to_dict(orient="records"),
      },
      indent=1,
      default=str,
    )
  )
  print_summary(summary, report["notes"])
  print(
    f"wrote {summary_path}, {per_image_path} and {json_path} ({report['wall_s']:.0f} s; "
    "processes: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["process_wall_s"].items()) + ")"
  )
  if opts.mlflow:
    log_mlflow(
      opts,
      summary,
      environments,
      {**report["machine"], "command": report["command"]},
      [summary_path, per_image_path, json_path],
    )
  return summary
