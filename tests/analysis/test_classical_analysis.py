"""Classical codecs in ``cbexp.analysis``: the analysis finds the images the runs were evaluated
on (their eval.* params and dataset input), codes them with JPEG, draws the curve, and reports
the BD-rate of every cbexp curve against it.

The runs are FAKE, logged with the MLflow client (no training): a "charm" curve that is JPEG's
own curve on the same two images at 0.8x the rate, image by image, so that its BD-rate against
JPEG is -20% exactly, with a bootstrap interval of zero width.
"""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbexp.analysis import classical, figures, report
from cbexp.config import compose
from cbexp.evaluation import classical as codecs_lib

EXPERIMENT = "classical-test"
SWEEP = "classical-sweep"
GRID = [15, 30, 50, 80]
RATE_FACTOR = 0.8


def write_images(folder):
  """Two smooth 192x192 colour images with some noise (MS-SSIM needs 161 pixels a side)."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:192, 0:192] / 192
  for i in range(2):
    channels = [np.sin(2 * np.pi * ((c + 1 + i) * x + (2 - c) * y)) for c in range(3)]
    pixels = np.stack(channels, -1) * 90 + 128 + rng.normal(0, 6, (192, 192, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"im{i}.png")
  return sorted(str(p) for p in folder.iterdir())


def log_runs(uri, paths, folder):
  """One fake run per JPEG quality of GRID: JPEG's per-image numbers at RATE_FACTOR x the rate,
  with the eval.* params, dataset input and eval/per_image.csv of a real run."""
  from mlflow.entities import Metric, Param
  from mlflow.tracking import MlflowClient

  from cbexp.tracking.runs import image_set_input

  jpeg = codecs_lib.evaluate(paths, [codecs_lib.CODECS["jpeg"]], {"jpeg": GRID})
  client = MlflowClient(uri)
  experiment_id = client.create_experiment(EXPERIMENT)
  params = {"eval.source": "folder", "eval.path": str(folder), "eval.files": "None"}
  params["eval.max_images"] = "None"
  for quality, rows in jpeg.groupby("quality"):
    per_image = rows.assign(bpp=rows["bpp"] * RATE_FACTOR)[["image", "bpp", "psnr", "ms_ssim"]]
    tags = {"entropy": "charm", "lmbda": str(quality), "eval_set": "folder", "sweep_id": SWEEP}
    run_id = client.create_run(experiment_id, tags={**tags, "run_type": "train"}).info.run_id
    metrics = {f"eval/{k}": per_image[k].mean() for k in ("bpp", "psnr", "ms_ssim")}
    metrics["eval/num_images"] = len(per_image)
    client.log_batch(
      run_id,
      metrics=[Metric(k, float(v), 0, 1) for k, v in metrics.items()],
      params=[Param(k, v) for k, v in params.items()],
    )
    client.log_inputs(run_id, datasets=[image_set_input("folder", paths, "evaluation")])
    per_image.to_csv(folder.parent / "per_image.csv", index=False)
    client.log_artifact(run_id, str(folder.parent / "per_image.csv"), "eval")
    client.set_terminated(run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  root = tmp_path_factory.mktemp("classical")
  paths = write_images(root / "eval")
  uri = f"sqlite:///{root / 'mlflow.db'}"
  log_runs(uri, paths, root / "eval")
  return {"uri": uri, "paths": paths, "root": root}


def analysis_config(store, out, *overrides):
  return compose(
    [
      f"tracking.uri={store['uri']}",
      f"experiment_name={EXPERIMENT}",
      f"sweep_id={SWEEP}",
      f"out={out}",
      "log_to_mlflow=false",
      "classical.codecs=[jpeg]",
      f"classical.qualities.jpeg=[{','.join(map(str, GRID))}]",
      "bootstrap.resamples=100",
      *overrides,
    ],
    config_name="analysis",
  )


@pytest.fixture(scope="module")
def analysis(store):
  out = store["root"] / "out"
  return out, report.analyze_runs(analysis_config(store, out))


def test_the_analysis_reports_bd_rate_against_the_classical_curve(analysis):
  out, result = analysis
  table = pd.read_csv(out / "bd_vs_classical.csv").set_index("quality")
  assert set(table["curve"]) == {"charm"} and set(table["anchor"]) == {"jpeg"}
  for quality in ("psnr", "ms_ssim_db"):  # the same qualities at 0.8x the rate: -20% on both
    row = table.loc[quality]
    assert row["bd_rate_pchip_pct"] == pytest.approx((RATE_FACTOR - 1) * 100, abs=1e-6)
    assert row["bd_rate_pchip_ci_low"] == pytest.approx(-20, abs=1e-6)
    assert row["bd_rate_pchip_ci_high"] == pytest.approx(-20, abs=1e-6)
    assert row["images"] == 2 and row["bd_quality_pchip_db"] > 0
  lines = (out / "report.md").read_text()
  assert "- bd_vs_classical: charm vs jpeg: BD-rate -20.00% [-20.00, -20.00]" in lines
  assert "- classical: 4 points of JPEG on 2 images (cached in classical_per_image.csv)" in lines
  # the classical curve is never the anchor, nor one of the runs' curves
  assert "- anchor: `charm` (anchor=auto)" in lines
  assert set(result["points"]["source"]) == {"cbexp"}


def test_the_classical_files_are_written_and_match_the_codec(analysis, store):
  out, _ = analysis
  points = pd.read_csv(out / "classical_points.csv")
  assert list(points["quality"]) == GRID and set(points["source"]) == {"classical"}
  direct = codecs_lib.per_quality(
    codecs_lib.evaluate(store["paths"], [codecs_lib.CODECS["jpeg"]], {"jpeg": GRID})
  )
  assert list(points["bpp"]) == pytest.approx(list(direct["bpp"]), rel=1e-12)
  assert list(points["psnr"]) == pytest.approx(list(direct["psnr"]), abs=1e-9)
  document = json.loads((out / "compressai" / "classical" / "jpeg.json").read_text())
  assert document["results"]["bpp"] == pytest.approx(list(direct["bpp"]), rel=1e-12)
  assert document["meta"]["quality"] == GRID and document["meta"]["dataset"] == "folder"
  assert len(pd.read_csv(out / classical.CACHE)) == 2 * len(GRID)


def test_a_rerun_reuses_the_cached_rows(analysis, store, monkeypatch):
  out, _ = analysis

  def refuse(*args):
    raise AssertionError("a cached row was coded again")

  monkeypatch.setattr(codecs_lib, "code_image", refuse)
  result = report.analyze_runs(analysis_config(store, out))
  assert "bd_vs_classical" in result["tables"]


def test_the_figure_draws_the_classical_curve_apart(analysis):
  out, result = analysis
  points = pd.concat(
    [result["points"], pd.read_csv(out / "classical_points.csv")], ignore_index=True
  )
  lines = {line.get_label(): line for line in figures.rd_figure(points).axes[0].get_lines()}
  jpeg = lines["JPEG (classical)"]
  assert jpeg.get_linestyle() == "-." and jpeg.get_color() == "black"
  assert len(jpeg.get_xdata()) == len(GRID) and lines["cbexp: charm"].get_linestyle() == "-"


def test_other_images_or_no_record_of_them_give_a_note_not_a_curve(store, tmp_path):
  frame = pd.DataFrame({"run_id": ["r"]})
  assert classical.run_eval_images(frame)[1].startswith("the runs record no eval.* params")
  other = write_images(tmp_path / "other")[:1]
  from mlflow.tracking import MlflowClient

  run_id = (
    MlflowClient(store["uri"])
    .search_runs([MlflowClient(store["uri"]).get_experiment_by_name(EXPERIMENT).experiment_id])[0]
    .info.run_id
  )
  assert "differ from the ones run" in classical.same_images(other, store["uri"], run_id)
  assert classical.same_images(store["paths"], store["uri"], run_id) is None


def test_classical_codecs_off(store, tmp_path):
  result = report.analyze_runs(analysis_config(store, tmp_path, "classical.codecs=[]"))
  assert "bd_vs_classical" not in result["tables"]
  assert not (tmp_path / classical.CACHE).exists()
