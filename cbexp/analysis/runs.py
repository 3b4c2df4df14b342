"""Selecting runs from MLflow and turning them into rate-distortion points.

Runs are read with ``mlflow.search_runs`` (one pandas row per run) and selected by experiment
name, optionally by ``sweep_id``, parent run, tag values and any extra MLflow filter. The names
read here are the schema of ``cbexp train``'s runs: tags ``entropy``, ``lmbda``,
``eval_set``, ``sweep_id``; metrics ``eval/*`` and ``model/*``; params = the flattened config.
"""

import pathlib
import sys

import pandas as pd

from cbexp.analysis.points import POINT_COLUMNS, AnalysisError

# points-table column <- MLflow metric
METRICS = {
  "bpp": "eval/bpp",
  "psnr": "eval/psnr",
  "ms_ssim": "eval/ms_ssim",
  "ms_ssim_db": "eval/ms_ssim_db",
  "encode_time_median": "eval/encode_time_median",
  "decode_time_median": "eval/decode_time_median",
  "encode_time_mean": "eval/encode_time_mean",
  "decode_time_mean": "eval/decode_time_mean",
  "num_images": "eval/num_images",
  "trainable_parameters": "model/trainable_parameters",
  "decode_kmac_per_pixel": "model/decode_kmac_per_pixel",
}
# The runner tags runs with run_type "train" and sweep parents with "sweep_parent"; analysis runs
# carry "analysis". Only training runs are rate points.
RUN_TYPE_TAG = "run_type"
NOT_RATE_POINTS = ("sweep_parent", "analysis")


def check_tracking_uri(uri):
  """Refuses a sqlite URI whose file does not exist (MLflow would create an empty store)."""
  if uri.startswith("sqlite:///"):
    path = pathlib.Path(uri[len("sqlite:///") :])
    if not path.is_file():
      raise AnalysisError(
        f"no MLflow store at {path} (tracking.uri={uri}); run cbexp.run first "
        "or point tracking.uri at the store"
      )
  return uri


def _quote(value):
  return "'" + str(value).replace("'", "\\'") + "'"


def build_filter(sweep_id=None, parent_run_id=None, tags=None, extra=None, status="FINISHED"):
  """-> an MLflow search filter string (clauses AND-ed)."""
  clauses = []
  if sweep_id:
    clauses.append(f"tags.sweep_id = {_quote(sweep_id)}")
  if parent_run_id:
    clauses.append(f"tags.mlflow.parentRunId = {_quote(parent_run_id)}")
  for key, value in (tags or {}).items():
    clauses.append(f"tags.`{key}` = {_quote(value)}")
  if status:
    clauses.append(f"attributes.status = {_quote(status)}")
  if extra:
    clauses.append(extra)
  return " and ".join(clauses)


def search_runs(
  tracking_uri,
  experiment_name,
  sweep_id=None,
  parent_run_id=None,
  tags=None,
  extra_filter=None,
  status="FINISHED",
):
  """-> (runs DataFrame from mlflow.search_runs, the filter used). Sweep parents and analysis
  runs are dropped."""
  import mlflow

  check_tracking_uri(tracking_uri)
  mlflow.set_tracking_uri(tracking_uri)
  if mlflow.get_experiment_by_name(experiment_name) is None:
    raise AnalysisError(f"no MLflow experiment named {experiment_name!r} at {tracking_uri}")
  filter_string = build_filter(sweep_id, parent_run_id, tags, extra_filter, status)
  try:
    runs = mlflow.search_runs(
      experiment_names=[experiment_name], filter_string=filter_string, output_format="pandas"
    )
  except mlflow.exceptions.MlflowException as e:
    raise AnalysisError(
      f"MLflow rejected the run filter {filter_string!r}: {str(e).splitlines()[0]}"
    ) from None
  run_type = f"tags.{RUN_TYPE_TAG}"
  if run_type in runs.columns:
    runs = runs[~runs[run_type].isin(NOT_RATE_POINTS)]
  return runs.reset_index(drop=True), filter_string


def _column(runs, key):
  """A config key's values: params.<key> first (the flattened config), then tags.<key>."""
  for prefix in ("params.", "tags."):
    if prefix + key in runs.columns:
      return runs[prefix + key]
  return None


def _tag(values, i):
  return "n/a" if values is None or pd.isna(values[i]) else str(values[i])


def runs_to_points(runs, group_by=()):
  """-> (points table, skipped) from a search_runs DataFrame.

  One point per run that has ``eval/bpp`` and ``eval/psnr``; runs without them (sweep parents,
  runs that stopped before evaluating), and runs whose lambda is not a number or whose metrics
  are not finite, are listed in ``skipped`` as (run_id, reason). Curves are
  the entropy model (tag ``entropy``, else param ``entropy.name``) plus each ``group_by`` key.
  """
  if runs.empty:
    return pd.DataFrame(columns=POINT_COLUMNS), []
  entropy = _column(runs, "entropy")
  if entropy is None:
    entropy = _column(runs, "entropy.name")
  if entropy is None:
    raise AnalysisError("the selected runs have no 'entropy' tag nor 'entropy.name' param")
  group_values = {}
  for key in group_by:
    values = _column(runs, key)
    if values is None:
      raise AnalysisError(f"group_by key {key!r} is neither a param nor a tag of the selected runs")
    group_values[key] = values
  lmbda = _column(runs, "lmbda")
  seed = _column(runs, "trainer.seed")
  train_set, eval_set = (runs.get(f"tags.{tag}") for tag in ("dataset", "eval_set"))

  rows, skipped = [], []
  for i, run in runs.iterrows():
    problem = _unusable(run, entropy[i], None if lmbda is None else lmbda[i])
    if problem:
      skipped.append((run["run_id"], problem))
      continue
    label = str(entropy[i])
    extras = [f"{key}={group_values[key][i]}" for key in group_by]
    if extras:
      label += " (" + ", ".join(extras) + ")"
    row = {
      "curve": label,
      "curve_id": label,
      "entropy": str(entropy[i]),
      "source": "cbexp",
      "kind": "measured",
      "run_id": run["run_id"],
      "lmbda": _number(None if lmbda is None else lmbda[i]),
      "seed": "n/a" if seed is None or pd.isna(seed[i]) else str(seed[i]),
      "seeds": 1,
      "train_set": _tag(train_set, i),
      "eval_set": _tag(eval_set, i),
    }
    for column, metric in METRICS.items():
      row[column] = float(run.get(f"metrics.{metric}", float("nan")))
    for key in group_by:
      row[key] = group_values[key][i]
    rows.append(row)
  points = pd.DataFrame(rows, columns=POINT_COLUMNS + list(group_by))
  return points.sort_values(["curve_id", "bpp"], kind="stable").reset_index(drop=True), skipped


def _number(value):
  """A param or tag as a float (NaN when absent); None when it is not a number."""
  if value is None or pd.isna(value):
    return float("nan")
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def _unusable(run, entropy, lmbda):
  """Why a run cannot be a rate point (None if it can): no evaluation, no entropy model, a
  lambda that is not a number, or a metric that is not finite. MLflow stores an infinite metric
  as the largest float, which would enter the tables as a number."""
  missing = [m for m in ("eval/bpp", "eval/psnr") if pd.isna(run.get(f"metrics.{m}", float("nan")))]
  if missing:
    return f"no {' / '.join(missing)} metric"
  if pd.isna(entropy):
    return "no entropy tag"
  if _number(lmbda) is None:
    return f"lmbda {str(lmbda)!r} is not a number"
  for metric in METRICS.values():
    value = run.get(f"metrics.{metric}", float("nan"))
    if not pd.isna(value) and not abs(float(value)) < sys.float_info.max:
      return f"{metric} is {'-' if value < 0 else ''}inf, not a finite number"
  return None


def eval_sets(runs):
  """The distinct ``eval_set`` tags of the selected runs (empty if the runner did not set one)."""
  column = "tags.eval_set"
  if column not in runs.columns:
    return set()
  return set(runs[column].dropna().astype(str))
