"""A REAL sweep, end to end: 2 entropy models x 3 lambdas of tiny models trained for a few steps
through ``python -m cbexp.run -m`` (one sweep, two commands), evaluated with real range coding,
then ``python -m cbexp.analysis`` on that sweep. The numbers only show that the pipeline works (4
training steps on three small images, one 192x192 evaluation image), not how good the models
are. The six jobs run in two processes (joblib launcher), writing one sqlite store.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbexp.analysis import figures
from helpers.runs import experiment_runs

ENTROPY_MODELS = ["charm", "checkerboard"]
LMBDAS = ["0.003", "0.01", "0.03"]


def write_images(folder, sizes, seed):
  """Smooth colour images (compressible, unlike noise)."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for i, (height, width) in enumerate(sizes):
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [
      np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y)) * 100 + 128
      for _ in range(3)
    ]
    Image.fromarray(np.stack(channels, -1).astype(np.uint8)).save(folder / f"{i}.png")
  return folder


def run(module, *arguments, cwd):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("MLFLOW_TRACKING_URI", None)
  return subprocess.run(
    [sys.executable, "-m", module, *arguments],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=env,
    timeout=900,
  )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sweep")
  uri = f"sqlite:///{folder / 'mlflow.db'}"
  train = write_images(folder / "train", [(96, 96), (80, 128), (96, 64)], seed=0)
  evaluation = write_images(folder / "eval", [(192, 192)], seed=1)  # MS-SSIM needs >= 161
  common = [
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "transform=tiny",
    "entropy.hidden_filters=[16,16]",
    f"lmbda={','.join(LMBDAS)}",
    "dataset=folder",
    f"dataset.path={train}",
    "eval=folder",
    f"eval.path={evaluation}",
    "trainer=tiny",
    "trainer.steps=4",
    "trainer.batch_size=2",
    "trainer.log_every=2",
    "trainer.val_every=4",
    "trainer.checkpoint_every=4",
    "memory_budget_mb=0",  # untiled: tests/helpers/runs.py
    f"tracking.uri={uri}",
    f"hydra.sweep.dir={folder / 'sweep'}",
  ]
  # One sweep (one directory, one sweep id) in two commands, as experiments/laptop.sh runs it:
  # ChARM with two slices (its graphs take a fraction of ten slices' time), then checkerboard.
  charm = run(
    "cbexp.run",
    "-m",
    "entropy=charm",
    "entropy.num_slices=2",
    "entropy.max_support_slices=1",
    *common,
    cwd=folder,
  )
  assert charm.returncode == 0, charm.stderr[-3000:]
  result = run("cbexp.run", "-m", "entropy=checkerboard", *common, cwd=folder)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((folder / "sweep" / "mlflow_sweep.json").read_text())
  out = folder / "analysis"
  analysis = run(
    "cbexp.analysis",
    f"tracking.uri={uri}",
    "experiment_name=cbexp",
    f"sweep_id={record['sweep_id']}",
    f"out={out}",
    cwd=folder,
  )
  assert analysis.returncode == 0, analysis.stderr[-3000:]
  return {
    "uri": uri,
    "out": out,
    "sweep_id": record["sweep_id"],
    "record": record,
    "sweep_stderr": result.stderr,
    "analysis_stdout": analysis.stdout,
  }


def test_the_sweep_ends_with_a_summary_and_the_next_command(sweep):
  lines = sweep["sweep_stderr"].strip().splitlines()
  jobs = len(ENTROPY_MODELS) * len(LMBDAS)
  assert lines[-2].startswith(
    f"sweep {sweep['sweep_id']} ended: {jobs} jobs: {jobs} finished, 0 failed or stopped"
  ), lines[-2:]
  # the store is ./mlflow.db of the sweep's working directory: the default, so not repeated
  assert lines[-1] == f"next: python -m cbexp.analysis sweep_id={sweep['sweep_id']}"
  from mlflow.tracking import MlflowClient

  parent = MlflowClient(sweep["uri"]).get_run(sweep["record"]["parent_run_id"])
  assert parent.info.status == "FINISHED"


def test_every_job_is_a_finished_child_run_with_its_own_run_dir(sweep):
  """The jobs of both commands, run two at a time by joblib in one sqlite store: none lost, each a
  child of the one parent run with the sweep's id, its steps logged once each."""
  client, runs = experiment_runs(sweep["uri"])
  parents = [r for r in runs if r.data.tags.get("run_type") == "sweep_parent"]
  children = [r for r in runs if r.data.tags.get("run_type") == "train"]
  assert len(parents) == 1 and len(children) == len(ENTROPY_MODELS) * len(LMBDAS)
  assert parents[0].info.run_id == sweep["record"]["parent_run_id"]
  assert parents[0].data.tags["sweep_id"] == sweep["sweep_id"]
  for run in children:
    assert run.data.tags["sweep_id"] == sweep["sweep_id"]
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert run.info.status == "FINISHED" and np.isfinite(run.data.metrics["eval/bpp"])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [2, 4]
  combinations = {(r.data.tags["entropy"], r.data.params["lmbda"]) for r in children}
  assert combinations == {(e, lm) for e in ENTROPY_MODELS for lm in LMBDAS}
  assert len({r.data.tags["run_dir"] for r in children}) == len(children)


def test_the_analysis_run_is_a_child_of_the_sweep(sweep):
  from mlflow.tracking import MlflowClient

  client = MlflowClient(sweep["uri"])
  run_id = sweep["analysis_stdout"].strip().splitlines()[-1].split()[-1]
  run = client.get_run(run_id)
  assert run.data.tags["mlflow.parentRunId"] == sweep["record"]["parent_run_id"]
  assert run.data.tags["sweep_id"] == sweep["sweep_id"]
  # it logged what it wrote, and only that
  logged = {a.path for a in client.list_artifacts(run_id)}
  written = {p.name for p in sweep["out"].iterdir()}
  assert logged == written


def test_a_failed_job_is_counted_and_the_sweep_goes_on(tmp_path):
  """One job with bad input (a patch size that is not a multiple of 64) fails with its one-line
  error; the other job runs; the summary counts both."""
  train = write_images(tmp_path / "train", [(96, 96), (80, 128)], seed=0)
  evaluation = write_images(tmp_path / "eval", [(64, 64)], seed=1)
  uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
  result = run(
    "cbexp.run",
    "-m",
    "transform=tiny",
    "entropy=hyperprior",
    "entropy.hidden_filters=[16,16]",
    "dataset=folder",
    f"dataset.path={train}",
    "dataset.val_images=0",
    "eval=folder",
    f"eval.path={evaluation}",
    "trainer=tiny",
    "trainer.steps=2",
    "trainer.batch_size=1",
    "trainer.log_every=1",
    "trainer.val_every=2",
    "trainer.checkpoint_every=2",
    "trainer.patch_size=100,64",
    f"tracking.uri={uri}",
    f"hydra.sweep.dir={tmp_path / 'sweep'}",
    cwd=tmp_path,
  )
  assert result.returncode != 0
  assert "error: trainer.patch_size 100: must be a multiple of 64" in result.stderr
  summary = [line for line in result.stderr.splitlines() if " ended: " in line]
  assert len(summary) == 1 and "2 jobs: 1 finished, 1 failed or stopped" in summary[0], (
    result.stderr[-2000:]
  )
  record = json.loads((tmp_path / "sweep" / "mlflow_sweep.json").read_text())
  from mlflow.tracking import MlflowClient

  assert MlflowClient(uri).get_run(record["parent_run_id"]).info.status == "FAILED"


def test_a_real_sweep_gives_the_figures_and_tables(sweep):
  from mlflow.tracking import MlflowClient

  client = MlflowClient(sweep["uri"])
  out = sweep["out"]
  points = pd.read_csv(out / "rd_points.csv", float_precision="round_trip")
  assert sorted(points["entropy"]) == sorted(ENTROPY_MODELS * len(LMBDAS))
  assert sorted(set(points["lmbda"])) == sorted(float(v) for v in LMBDAS)
  metrics = {rid: client.get_run(rid).data.metrics for rid in points["run_id"]}
  for row in points.itertuples():
    m = metrics[row.run_id]
    assert (row.bpp, row.psnr) == (m["eval/bpp"], m["eval/psnr"])
    assert row.decode_time_median == m["eval/decode_time_median"]

  comparison = pd.read_csv(out / "comparison.csv", keep_default_na=False).set_index("curve")
  decode = {}
  for entropy in ENTROPY_MODELS:
    runs = [metrics[rid] for rid in points[points["entropy"] == entropy]["run_id"]]
    row = comparison.loc[entropy]
    assert float(row["trainable_parameters"]) == runs[0]["model/trainable_parameters"]
    kmac = runs[0].get("model/decode_kmac_per_pixel")
    if kmac is None:
      assert row["decode_kmac_per_pixel"] == "n/a"
    else:
      assert float(row["decode_kmac_per_pixel"]) == pytest.approx(kmac)
    decode[entropy] = np.median([m["eval/decode_time_median"] for m in runs])
    assert float(row["decode_time_median_s"]) == pytest.approx(decode[entropy])
  assert float(comparison.loc["checkerboard", "decode_speedup_vs_anchor"]) == pytest.approx(
    decode["charm"] / decode["checkerboard"]
  )
  # ChARM has more parameters than the checkerboard model, also in the tiny configuration
  assert float(comparison.loc["charm", "trainable_parameters"]) > float(
    comparison.loc["checkerboard", "trainable_parameters"]
  )

  bd = pd.read_csv(out / "bd_psnr.csv").set_index("curve")
  row = bd.loc["checkerboard"]
  assert row["anchor"] == "charm" and row["points"] == row["anchor_points"] == 3
  # 20 steps: the curves may not overlap; then the note says so instead of a number
  assert np.isfinite(row["bd_rate_pchip_pct"]) or isinstance(row["note"], str)

  for entropy in ENTROPY_MODELS:
    results = json.loads((out / "compressai" / f"{entropy}.json").read_text())
    assert len(results["results"]["bpp"]) == 3
    assert results["results"]["bpp"] == sorted(results["results"]["bpp"])
  for stem in ("rd_psnr", "rd_msssim"):
    assert Image.open(out / f"{stem}.png").size == figures.PNG_SIZE
