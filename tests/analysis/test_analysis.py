"""cbexp.analysis: BD-rate, tables, figures, CompressAI JSON, MLflow round trip, notebook.

Most tests read SYNTHETIC runs: the `synthetic_store` fixture logs runs with the MLflow client
following the runner's schema (tags, params, eval/* and model/* metrics) with numbers chosen so
that results are known by hand (the checkerboard curve is the charm curve at 1.1x the rate:
BD-rate +10% exactly). They are fixtures for the analysis code, not measurements. The real
tiny sweep through ``python -m cbexp.run -m`` is in tests/test_analysis_sweep.py.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import unittest.mock

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbexp.analysis import bd, figures, reference, runs, tables
from cbexp.analysis.points import POINT_COLUMNS, AnalysisError

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENT = "analysis-test"
SWEEP = "synthetic-sweep-1"

# Synthetic rate points (see the module docstring): entropy -> per lambda
LMBDAS = [0.003, 0.01, 0.03]
CHARM_BPP = [0.21, 0.42, 0.83]
PSNR = [28.1, 31.2, 34.4]
MS_SSIM = [0.951, 0.972, 0.986]
RATE_FACTOR = 1.1
SYNTHETIC = {
  "charm": dict(
    bpp=CHARM_BPP,
    psnr=PSNR,
    ms_ssim=MS_SSIM,
    enc=[0.30, 0.32, 0.35],
    dec=[0.40, 0.44, 0.50],
    params=1_234_567,
    kmac=52.5,
  ),
  "checkerboard": dict(
    bpp=[b * RATE_FACTOR for b in CHARM_BPP],
    psnr=PSNR,
    ms_ssim=MS_SSIM,
    enc=[0.20, 0.22, 0.27],
    dec=[0.20, 0.21, 0.25],
    params=456_789,
    kmac=None,
  ),
  # one rate point only
  "hyperprior": dict(
    bpp=[0.5],
    psnr=[31.0],
    ms_ssim=[0.975],
    enc=[0.1],
    dec=[0.1],
    params=333_333,
    kmac=None,
    lmbdas=[0.01],
  ),
}


def python():
  return sys.executable


def run_analysis(*overrides, cwd=None):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("MLFLOW_TRACKING_URI", None)
  return subprocess.run(
    [python(), "-m", "cbexp.analysis", *overrides],
    capture_output=True,
    text=True,
    cwd=cwd or REPO,
    env=env,
    timeout=300,
  )


def log_synthetic_runs(uri):
  """Logs the SYNTHETIC fixture runs; -> {entropy: [run ids]} of the runs that are rate points."""
  from mlflow.entities import Metric, Param
  from mlflow.tracking import MlflowClient

  client = MlflowClient(uri)
  experiment_id = client.create_experiment(EXPERIMENT)
  parent = client.create_run(
    experiment_id,
    run_name="sweep (synthetic)",
    tags={"sweep_id": SWEEP, "run_type": "sweep_parent"},
  )
  client.set_terminated(parent.info.run_id, "FINISHED")
  ids = {}
  for entropy, s in SYNTHETIC.items():
    for i, lmbda in enumerate(s.get("lmbdas", LMBDAS)):
      tags = {
        "entropy": entropy,
        "lmbda": str(lmbda),
        "transform": "tiny",
        "eval_set": "kodak",
        "sweep_id": SWEEP,
        "run_type": "train",
        "synthetic": "true",
        "mlflow.parentRunId": parent.info.run_id,
      }
      run = client.create_run(experiment_id, run_name=f"{entropy} {lmbda} (synthetic)", tags=tags)
      rid = run.info.run_id
      params = {
        "entropy.name": entropy,
        "lmbda": lmbda,
        "trainer.steps": 10,
        "transform.num_filters": 16,
      }
      metrics = {
        "eval/bpp": s["bpp"][i],
        "eval/psnr": s["psnr"][i],
        "eval/ms_ssim": s["ms_ssim"][i],
        "eval/ms_ssim_db": -10 * math.log10(1 - s["ms_ssim"][i]),
        "eval/encode_time_median": s["enc"][i],
        "eval/decode_time_median": s["dec"][i],
        "eval/encode_time_mean": s["enc"][i] * 1.05,
        "eval/decode_time_mean": s["dec"][i] * 1.05,
        "eval/num_images": 24,
        "model/trainable_parameters": s["params"],
      }
      if s["kmac"] is not None:
        metrics["model/decode_kmac_per_pixel"] = s["kmac"]
      client.log_batch(
        rid,
        metrics=[Metric(k, float(v), 0, 10) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
      )
      client.set_terminated(rid, "FINISHED")
      ids.setdefault(entropy, []).append(rid)
  # A sweep job that finished without evaluating (skipped) and a run of another sweep (filtered).
  unevaluated = client.create_run(
    experiment_id, tags={"entropy": "charm", "sweep_id": SWEEP, "run_type": "train"}
  )
  client.log_metric(unevaluated.info.run_id, "train/loss", 1.0)
  client.set_terminated(unevaluated.info.run_id, "FINISHED")
  other = client.create_run(
    experiment_id,
    tags={"entropy": "charm", "sweep_id": "other-sweep", "run_type": "train", "eval_set": "kodak"},
  )
  client.log_metric(other.info.run_id, "eval/bpp", 9.0)
  client.log_metric(other.info.run_id, "eval/psnr", 9.0)
  client.set_terminated(other.info.run_id, "FINISHED")
  return ids, unevaluated.info.run_id


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
  folder = tmp_path_factory.mktemp("mlflow")
  uri = f"sqlite:///{folder / 'mlflow.db'}"
  ids, unevaluated = log_synthetic_runs(uri)
  return {"uri": uri, "ids": ids, "unevaluated": unevaluated, "folder": folder}


@pytest.fixture(scope="session")
def cli_result(synthetic_store, tmp_path_factory):
  out = tmp_path_factory.mktemp("analysis") / "out"
  result = run_analysis(
    f"tracking.uri={synthetic_store['uri']}",
    f"experiment_name={EXPERIMENT}",
    f"sweep_id={SWEEP}",
    f"out={out}",
  )
  assert result.returncode == 0, result.stderr
  return out, result


def metrics_of(uri, run_id):
  from mlflow.tracking import MlflowClient

  return MlflowClient(uri).get_run(run_id).data.metrics


# --- BD-rate against hand-computable cases ---------------------------------------------------


@pytest.mark.parametrize("method", ["pchip", "akima"])
@pytest.mark.parametrize("factor", [0.8, 1.1, 1.5])
def test_bd_rate_of_a_curve_against_itself_at_scaled_rates_is_the_factor(method, factor):
  rate = [0.12, 0.25, 0.5, 0.9, 1.4]
  psnr = [27.5, 30.1, 33.0, 35.6, 37.9]
  bd_rate, _ = bd.bd_pair(rate, psnr, [r * factor for r in rate], psnr, method)
  assert bd_rate == pytest.approx((factor - 1) * 100, abs=1e-9)
  same_rate, same_psnr = bd.bd_pair(rate, psnr, rate, psnr, method)
  assert (same_rate, same_psnr) == (pytest.approx(0, abs=1e-12), pytest.approx(0, abs=1e-12))
  _, bd_psnr = bd.bd_pair(rate, psnr, rate, [p + 0.7 for p in psnr], method)
  assert bd_psnr == pytest.approx(0.7, abs=1e-9)


def test_bd_pair_ignores_the_order_of_the_points():
  rate, psnr = [0.12, 0.25, 0.5, 0.9], [27.5, 30.1, 33.0, 35.6]
  shuffled = [2, 0, 3, 1]
  ordered = bd.bd_pair(rate, psnr, [r * 1.2 for r in rate], psnr, "pchip")
  mixed = bd.bd_pair(
    [rate[i] for i in shuffled],
    [psnr[i] for i in shuffled],
    [rate[i] * 1.2 for i in shuffled],
    [psnr[i] for i in shuffled],
    "pchip",
  )
  assert mixed == pytest.approx(ordered) and ordered[0] == pytest.approx(20)


def test_overlap_is_the_shared_fraction_of_the_ranges():
  assert bd.overlap([0, 10], [5, 15]) == pytest.approx(5 / 15)
  assert bd.overlap([0, 1], [2, 3]) == 0


def points_for(curves):
  rows = []
  for name, (rate, psnr) in curves.items():
    for r, p in zip(rate, psnr):
      rows.append(
        {
          "curve": name,
          "curve_id": name,
          "entropy": name,
          "source": "cbexp",
          "kind": "measured",
          "bpp": r,
          "psnr": p,
          "run_id": f"{name}-{r}",
        }
      )
  return pd.DataFrame(rows).reindex(columns=POINT_COLUMNS)


def test_bd_table_with_too_few_points_or_no_overlap_says_so_instead_of_failing():
  points = points_for(
    {
      "charm": ([0.2, 0.4, 0.8], [28, 31, 34]),
      "single": ([0.5], [31.5]),
      "far": ([4.0, 8.0], [50, 55]),
      "expensive": ([1.0, 2.0], [29, 33]),
      "checkerboard": ([0.22, 0.44, 0.88], [28, 31, 34]),
    }
  )
  table = bd.bd_table(points, anchor="charm").set_index("curve")
  assert "charm" not in table.index  # the anchor is not compared with itself
  assert table.loc["checkerboard", "bd_rate_pchip_pct"] == pytest.approx(10)
  assert table.loc["checkerboard", "note"] == ""
  single = table.loc["single"]
  assert math.isnan(single["bd_rate_pchip_pct"]) and math.isnan(single["bd_psnr_akima_db"])
  assert "fewer than two rate points (curve)" in single["note"]
  # 0.5 bpp lies on the anchor between 31 and 34 dB: the point's distance to it is reported
  expected = 31.5 - bd.quality_at_rate([0.2, 0.4, 0.8], [28, 31, 34], 0.5)
  assert single["delta_psnr_at_same_rate_db"] == pytest.approx(expected)
  assert 31 < 31.5 - expected < 34
  assert table.loc["far", "overlap_psnr"] == 0
  assert "do not overlap" in table.loc["far", "note"]
  assert math.isnan(table.loc["far", "bd_rate_pchip_pct"])
  # same qualities at rates the anchor never reaches: a BD-rate, but no BD-PSNR
  expensive = table.loc["expensive"]
  assert expensive["bd_rate_pchip_pct"] > 100 and math.isnan(expensive["bd_psnr_pchip_db"])
  assert expensive["overlap_log_rate"] == 0 and "rate ranges do not overlap" in expensive["note"]


def test_bd_table_with_a_single_point_anchor():
  points = points_for({"charm": ([0.4], [31]), "checkerboard": ([0.22, 0.44], [28, 31])})
  table = bd.bd_table(points, anchor="charm")
  assert len(table) == 1 and "fewer than two rate points (anchor)" in table["note"][0]
  assert math.isnan(table["bd_rate_pchip_pct"][0])


def test_an_unknown_anchor_is_a_clear_error():
  points = points_for({"charm": ([0.2, 0.4], [28, 31])})
  with pytest.raises(AnalysisError, match="anchor 'nope' matches no curve"):
    bd.bd_table(points, anchor="nope")


# --- published numbers ----------------------------------------------------------------------


def test_bundled_published_numbers_are_the_shared_reference():
  shared = REPO.parent / "shared" / "reference" / "published-kodak.json"
  if not shared.is_file():
    pytest.skip(f"{shared} not present (only in the development checkout)")
  original = json.loads(shared.read_text())
  bundled = reference.load_published()
  assert len(bundled["curves"]) == len(original["curves"])
  for b, o in zip(bundled["curves"], original["curves"]):
    assert {k: b[k] for k in o} == o  # same numbers, names and sources; only id/label added
  assert bundled["timings"] == original["timings"]


def test_unknown_published_curve_is_a_clear_error():
  with pytest.raises(AnalysisError, match="unknown published curve id"):
    reference.published_points(["ms2020_charm", "nope"])


def test_published_only_regenerates_the_published_comparison(tmp_path):
  result = run_analysis("published_only=true", f"out={tmp_path}")
  assert result.returncode == 0, result.stderr
  png = tmp_path / "published_rd.png"
  assert Image.open(png).size == figures.PNG_SIZE
  assert (tmp_path / "published_rd.pdf").read_bytes()[:5] == b"%PDF-"
  # the figure holds the chosen curves with their published numbers
  shown = pd.read_csv(tmp_path / "rd_points.csv")
  assert set(shown["curve_id"]) == {
    "ms2020_charm",
    "mbt2018_context",
    "mbt2018_mean",
    "mbt2018_checkerboard_he2021",
    "ms2020_checkerboard_tf2",
  }
  ours = shown[shown["curve_id"] == "ms2020_checkerboard_tf2"]
  assert list(ours["bpp"]) == [0.4132] and list(ours["psnr"]) == [32.832]
  table = pd.read_csv(tmp_path / "bd_psnr.csv").set_index("curve")
  tf2 = table.loc["ms2020 + checkerboard, TF2 reimpl. (one model)"]
  assert "fewer than two rate points" in tf2["note"]
  assert -1.0 < float(tf2["delta_psnr_at_same_rate_db"]) < 0  # below the official ChARM curve
  context = table.loc["mbt2018 serial context (official)"]
  assert 0 < float(context["bd_rate_pchip_pct"]) < 20  # ChARM saves rate over serial context
  assert "Nikolai10/Checkerboard-Context-Model" in (tmp_path / "report.md").read_text()
  # the copy the README shows is this figure (same pixels up to font rendering)
  shown_in_readme = np.asarray(
    Image.open(REPO / "notebooks" / "figures" / "published_rd.png").convert("RGB"), dtype=float
  )
  regenerated = np.asarray(Image.open(png).convert("RGB"), dtype=float)
  assert shown_in_readme.shape == regenerated.shape
  assert np.abs(shown_in_readme - regenerated).mean() < 2.0


def test_published_rd_figure_draws_every_curve_and_the_single_point():
  points = reference.published_points(["ms2020_charm", "ms2020_checkerboard_tf2"])
  fig = figures.rd_figure(points, "psnr", "t")
  lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
  charm = lines["ms2020 ChARM (official)"]
  assert list(charm.get_xdata()) == reference.load_published()["curves"][0]["bpp"]
  single = lines["ms2020 + checkerboard, TF2 reimpl. (one model)"]
  assert list(single.get_xdata()) == [0.4132] and single.get_linestyle() == "None"
  assert single.get_marker() not in (None, "None", "")
  axis = fig.axes[0]
  assert "bits per pixel" in axis.get_xlabel() and "dB" in axis.get_ylabel()
  assert axis.get_legend() is not None


# --- from MLflow runs -------------------------------------------------------------------------


def test_search_runs_selects_the_sweep_and_skips_what_is_not_a_rate_point(synthetic_store):
  frame, filter_string = runs.search_runs(synthetic_store["uri"], EXPERIMENT, sweep_id=SWEEP)
  assert "tags.sweep_id = 'synthetic-sweep-1'" in filter_string
  points, skipped = runs.runs_to_points(frame)
  expected = {rid for ids in synthetic_store["ids"].values() for rid in ids}
  assert set(points["run_id"]) == expected  # no sweep parent, no other sweep
  assert skipped == [(synthetic_store["unevaluated"], "no eval/bpp / eval/psnr metric")]


def test_runs_with_a_bad_lambda_or_an_infinite_metric_are_left_out_in_one_line_each(tmp_path):
  """A run whose lmbda param is not a number, and runs whose eval/bpp is inf or eval/psnr -inf
  (MLflow stores them as the largest float): each is left out of every table with one line that
  names it, and the analysis of the others goes on."""
  from mlflow.tracking import MlflowClient

  uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
  log_synthetic_runs(uri)
  client = MlflowClient(uri)
  experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
  reasons = {}
  for lmbda, bpp, psnr, reason in (
    ("abc", 0.3, 30.0, "lmbda 'abc' is not a number"),
    ("0.02", math.inf, 30.0, "eval/bpp is inf, not a finite number"),
    ("0.02", 0.3, -math.inf, "eval/psnr is -inf, not a finite number"),
  ):
    run_id = client.create_run(
      experiment_id, tags={"entropy": "charm", "sweep_id": SWEEP, "run_type": "train"}
    ).info.run_id
    client.log_param(run_id, "lmbda", lmbda)
    client.log_metric(run_id, "eval/bpp", bpp)
    client.log_metric(run_id, "eval/psnr", psnr)
    client.set_terminated(run_id, "FINISHED")
    reasons[run_id] = reason
  out = tmp_path / "out"
  result = run_analysis(
    f"tracking.uri={uri}",
    f"experiment_name={EXPERIMENT}",
    f"sweep_id={SWEEP}",
    f"out={out}",
    "log_to_mlflow=false",
  )
  assert result.returncode == 0, result.stderr
  for run_id, reason in reasons.items():
    assert f"left out run {run_id}: {reason}" in result.stdout.splitlines(), result.stdout
  rd = pd.read_csv(out / "rd_points.csv")
  assert not set(reasons) & set(rd["run_id"]) and np.isfinite(rd[["bpp", "psnr"]]).all().all()
  assert "Traceback" not in result.stderr


def test_group_by_splits_curves_by_a_config_key(synthetic_store):
  frame, _ = runs.search_runs(synthetic_store["uri"], EXPERIMENT, sweep_id=SWEEP)
  points, _ = runs.runs_to_points(frame, group_by=["trainer.steps"])
  assert set(points["curve"]) == {f"{e} (trainer.steps=10)" for e in SYNTHETIC}
  with pytest.raises(AnalysisError, match="group_by key 'nope'"):
    runs.runs_to_points(frame, group_by=["nope"])


def test_tables_match_the_mlflow_metrics_they_came_from(synthetic_store, cli_result):
  out, _ = cli_result
  uri = synthetic_store["uri"]
  # every rate point is its run's eval metrics
  rd = pd.read_csv(out / "rd_points.csv", float_precision="round_trip")
  ours = rd[rd["source"] == "cbexp"]
  assert len(ours) == 7
  for row in ours.itertuples():
    m = metrics_of(uri, row.run_id)
    assert (row.bpp, row.psnr, row.ms_ssim) == (m["eval/bpp"], m["eval/psnr"], m["eval/ms_ssim"])
  # comparison table: parameters, kMAC, median times and speed-ups from the runs' metrics
  comparison = pd.read_csv(out / "comparison.csv", keep_default_na=False).set_index("curve")
  decode = {}
  for entropy, run_ids in synthetic_store["ids"].items():
    metrics = [metrics_of(uri, rid) for rid in run_ids]
    row = comparison.loc[entropy]
    assert float(row["trainable_parameters"]) == metrics[0]["model/trainable_parameters"]
    kmac = metrics[0].get("model/decode_kmac_per_pixel")
    if kmac is None:
      assert row["decode_kmac_per_pixel"] == "n/a"  # not logged: said so, not invented
    else:
      assert float(row["decode_kmac_per_pixel"]) == pytest.approx(kmac)
    decode[entropy] = np.median([m["eval/decode_time_median"] for m in metrics])
    assert float(row["decode_time_median_s"]) == pytest.approx(decode[entropy])
    assert float(row["encode_time_median_s"]) == pytest.approx(
      np.median([m["eval/encode_time_median"] for m in metrics])
    )
    assert row["anchor"] == "charm" and int(row["rate_points"]) == len(run_ids)
  for entropy in SYNTHETIC:
    assert float(comparison.loc[entropy, "decode_speedup_vs_anchor"]) == pytest.approx(
      decode["charm"] / decode[entropy]
    )
  assert float(comparison.loc["checkerboard", "decode_speedup_vs_anchor"]) == pytest.approx(
    0.44 / 0.21
  )
  assert float(comparison.loc["checkerboard", "bd_rate_pchip_pct"]) == pytest.approx(10)
  assert float(comparison.loc["charm", "bd_rate_pchip_pct"]) == 0
  assert comparison.loc["hyperprior", "bd_rate_pchip_pct"] == "n/a"
  markdown = (out / "comparison.md").read_text()
  assert "| checkerboard | checkerboard | charm | 3 |" in markdown and "456,789" in markdown


def test_bd_tables_from_the_runs(cli_result):
  out, _ = cli_result
  for name in ("bd_psnr", "bd_msssim"):
    table = pd.read_csv(out / f"{name}.csv").set_index("curve")
    checkerboard = table.loc["checkerboard"]
    # the checkerboard runs are the charm runs at 1.1x the rate: +10% on both quality axes
    assert checkerboard["bd_rate_pchip_pct"] == pytest.approx(10)
    assert checkerboard["bd_rate_akima_pct"] == pytest.approx(10)
    assert checkerboard["anchor"] == "charm" and checkerboard["note"] != checkerboard["note"]
    assert "fewer than two rate points" in table.loc["hyperprior", "note"]
  # published curves (the runs are tagged eval_set=kodak) are compared with the same anchor
  psnr = pd.read_csv(out / "bd_psnr.csv")
  assert "ms2020 ChARM (official)" in set(psnr["curve"])
  assert "| checkerboard | cbexp | charm | psnr | 3 | 3 | 10 |" in (out / "bd_psnr.md").read_text()


def test_compressai_results_schema(synthetic_store, cli_result):
  out, _ = cli_result
  files = sorted(p.name for p in (out / "compressai").glob("*.json"))
  assert files == ["charm.json", "checkerboard.json", "hyperprior.json"]
  results = json.loads((out / "compressai" / "checkerboard.json").read_text())
  assert set(results) == {"name", "description", "meta", "results"}
  assert set(results["results"]) == {
    "bpp",
    "psnr-rgb",
    "ms-ssim-rgb",
    "encoding_time",
    "decoding_time",
  }
  metrics = [
    metrics_of(synthetic_store["uri"], rid) for rid in synthetic_store["ids"]["checkerboard"]
  ]
  metrics.sort(key=lambda m: m["eval/bpp"])
  assert results["results"]["bpp"] == [m["eval/bpp"] for m in metrics]
  assert results["results"]["psnr-rgb"] == [m["eval/psnr"] for m in metrics]
  assert results["results"]["ms-ssim-rgb"] == [m["eval/ms_ssim"] for m in metrics]
  assert results["results"]["decoding_time"] == [m["eval/decode_time_mean"] for m in metrics]
  assert results["meta"]["lmbda"] == LMBDAS and results["meta"]["dataset"] == "kodak"


def test_figures_open_with_the_expected_size(cli_result):
  out, _ = cli_result
  for stem in ("rd_psnr", "rd_msssim"):
    image = Image.open(out / f"{stem}.png")
    assert image.size == figures.PNG_SIZE == (960, 720)
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn on, not blank
    assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"


def test_the_figure_shows_the_runs_and_a_single_point(synthetic_store):
  frame, _ = runs.search_runs(synthetic_store["uri"], EXPERIMENT, sweep_id=SWEEP)
  points, _ = runs.runs_to_points(frame)
  for quality, values in (
    ("psnr", PSNR),
    ("ms_ssim_db", [-10 * math.log10(1 - v) for v in MS_SSIM]),
  ):
    fig = figures.rd_figure(points, quality)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["cbexp: charm"].get_xdata()) == CHARM_BPP
    assert list(lines["cbexp: charm"].get_ydata()) == pytest.approx(values)
    assert lines["cbexp: charm"].get_linestyle() == "-"
    hyperprior = lines["cbexp: hyperprior"]
    assert len(hyperprior.get_xdata()) == 1 and hyperprior.get_linestyle() == "None"
    assert "dB" in fig.axes[0].get_ylabel()


def test_the_analysis_is_logged_back_to_mlflow(synthetic_store, cli_result):
  from mlflow.tracking import MlflowClient

  _, result = cli_result
  run_id = result.stdout.strip().splitlines()[-1].split()[-1]
  client = MlflowClient(synthetic_store["uri"])
  run = client.get_run(run_id)
  assert run.data.tags["run_type"] == "analysis" and run.info.run_name == "analysis"
  assert run.data.tags["analysis.sweep_id"] == SWEEP
  assert run.data.metrics["bd_psnr/checkerboard/bd_rate_pchip_pct"] == pytest.approx(10)
  artifacts = {a.path for a in client.list_artifacts(run_id)}
  assert {
    "rd_psnr.png",
    "rd_psnr.pdf",
    "rd_msssim.png",
    "bd_psnr.csv",
    "comparison.csv",
    "comparison.md",
    "report.md",
    "compressai",
  } <= artifacts
  # analysing again does not take the analysis run for a rate point
  frame, _ = runs.search_runs(synthetic_store["uri"], EXPERIMENT, sweep_id=None)
  assert run_id not in set(frame["run_id"])


def test_overlay_off_and_no_mlflow_logging(synthetic_store, tmp_path):
  frame, _ = runs.search_runs(synthetic_store["uri"], EXPERIMENT, sweep_id=SWEEP)
  before = len(frame)
  from cbexp.analysis import report
  from cbexp.config import compose

  cfg = compose(
    [
      f"tracking.uri={synthetic_store['uri']}",
      f"experiment_name={EXPERIMENT}",
      f"sweep_id={SWEEP}",
      f"out={tmp_path}",
      "reference.overlay=false",
      "log_to_mlflow=false",
      "anchor=checkerboard",
    ],
    config_name="analysis",
  )
  result = report.analyze_runs(cfg)
  assert result["analysis_run_id"] is None
  assert set(result["points"]["source"]) == {"cbexp"}
  table = result["tables"]["bd_psnr"].set_index("curve")
  assert table.loc["charm", "bd_rate_pchip_pct"] == pytest.approx((1 / RATE_FACTOR - 1) * 100)
  frame, _ = runs.search_runs(synthetic_store["uri"], EXPERIMENT, sweep_id=SWEEP)
  assert len(frame) == before


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      ["tracking.uri=sqlite:////nonexistent/mlflow.db"],
      "no MLflow store at /nonexistent/mlflow.db",
    ),
    (["experiment_name=nope"], "no MLflow experiment named 'nope'"),
    (["sweep_id=nope"], "no runs with eval/bpp and eval/psnr"),
    (["anchor=nope"], "anchor 'nope' matches no curve"),
    (["reference.overlay=maybe"], "reference.overlay must be auto, true or false"),
    (["bd.methods=[pchip,nope]"], "unknown BD interpolation method"),
    (["filter=\"tags.entropy ~ 'x'\""], "MLflow rejected the run filter"),
  ],
)
def test_bad_selection_is_a_clear_error(synthetic_store, tmp_path, overrides, message):
  from cbexp.analysis import report
  from cbexp.config import compose

  cfg = compose(
    [
      f"tracking.uri={synthetic_store['uri']}",
      f"experiment_name={EXPERIMENT}",
      f"out={tmp_path}",
      "log_to_mlflow=false",
      *overrides,
    ],
    config_name="analysis",
  )
  with pytest.raises(AnalysisError, match=message):
    report.analyze_runs(cfg)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      ["tracking.uri=sqlite:////nonexistent/mlflow.db"],
      "no MLflow store at /nonexistent/mlflow.db",
    ),
    ([f"experiment_name={EXPERIMENT}", "anchor=nope"], "anchor 'nope' matches no curve"),
    (["bogus=1"], "Could not override 'bogus'. To append to your config use +bogus=1"),
  ],
)
def test_cli_bad_input_is_one_line_and_exit_2(synthetic_store, tmp_path, overrides, message):
  overrides = [f"tracking.uri={synthetic_store['uri']}", f"out={tmp_path}", *overrides]
  result = run_analysis(*overrides)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_markdown_marks_missing_values():
  text = tables.to_markdown(pd.DataFrame({"a": [1234567.0, float("nan")], "b": ["x", "y"]}))
  assert text.splitlines()[2:] == ["| 1,234,567 | x |", "| n/a | y |"]


# --- the notebook ---------------------------------------------------------------------------------


def test_notebook_regenerates_the_figures_from_mlflow(synthetic_store, tmp_path):
  import nbformat
  from nbclient import NotebookClient

  notebook = nbformat.read(REPO / "notebooks" / "rd_curves.ipynb", as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
    "commit the notebook without outputs"
  )
  env = {
    "MLFLOW_TRACKING_URI": synthetic_store["uri"],
    "CBEXP_EXPERIMENT": EXPERIMENT,
    "CBEXP_SWEEP_ID": SWEEP,
    "CBEXP_ANALYSIS_OUT": str(tmp_path / "out"),
  }
  with unittest.mock.patch.dict(os.environ, env):
    NotebookClient(
      notebook,
      timeout=240,
      kernel_name="python3",
      resources={"metadata": {"path": str(REPO / "notebooks")}},
    ).execute()
  for stem in ("rd_psnr", "rd_msssim"):
    assert Image.open(tmp_path / "out" / f"{stem}.png").size == figures.PNG_SIZE
  images = [
    o
    for cell in notebook.cells
    for o in cell.get("outputs", [])
    if "image/png" in o.get("data", {})
  ]
  assert len(images) >= 2
  text = "".join(
    o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
    for cell in notebook.cells
    for o in cell.get("outputs", [])
  )
  assert "checkerboard vs charm: BD-rate +10.00%" in text and "(pchip" in text
