"""experiments/laptop.sh end to end with two training steps (the real study takes about 85
minutes; its results are committed in experiments/results/laptop/): the three sweeps with RD
points during training, the bench on the trained models, the study record and the analysis
(classical codecs, trajectories, equal compute), into one folder."""

import json
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

from helpers.runs import environment

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = ["charm", "checkerboard", "hyperprior"]


def test_the_laptop_study_script_runs_in_two_steps(tmp_path, kodak_dir):
  out = tmp_path / "out"
  env = {
    **environment(),
    "PYTHON": sys.executable,
    "CBEXP_KODAK_DIR": str(kodak_dir),
    "STEPS": "2",
    "LAMBDAS": "0.005,0.02",
    "BENCH_LMBDA": "0.02",
    "SEEDS": "0",
    "JOBS": "2",
    "BENCH_REPEATS": "1",
    "BENCH_MAX_IMAGES": "1",
    "OUT": str(out),
    "SWEEP_DIR": str(tmp_path / "sweep"),
    "TRACKING": f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    # Untiled codec (memory_budget_mb=0): the streamed graphs take longer to trace than the
    # two steps take to train; the streamed codec is tested in tests/models and tests/codec.
    "EXTRA": "eval.max_images=1 trainer.log_every=1 trainer.val_every=2 trainer.checkpoint_every=2 "
    "memory_budget_mb=0",
    # Two slices, not ten: the same steps of the script, in a fraction of ChARM's graph building.
    "CHARM_EXTRA": "entropy.num_slices=2 entropy.max_support_slices=1",
  }
  result = subprocess.run(
    ["bash", str(REPO / "experiments" / "laptop.sh")],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  study = json.loads((out / "study.json").read_text())
  assert study["eval_set"].startswith("Kodak kodim13-24") and study["wall_time_s"]["total"] > 0
  assert {p.stem for p in (out / "compressai").glob("*.json")} >= set(MODELS)
  bench = pd.read_csv(out / "bench.csv")  # the trained lmbda=0.02 models, not untrained ones
  assert sorted(bench["entropy"]) == MODELS and bench["trained_weights"].all()
  report = (out / "report.md").read_text()
  assert "trained on kodak_train; evaluated on kodak_test" in report
  runs = pd.read_csv(out / "rd_runs.csv")
  assert len(runs) == 6 and set(runs["train_set"]) == {"kodak_train"}
  # the three sweeps share one sweep id: one analysis covers every model
  # RD points during training (at the last step), compute, the classical codecs on the same image
  training = pd.read_csv(out / "rd_training.csv")
  assert len(training) == 6 and (training["step"] == 2).all() and (training["cpu_s"] > 0).all()
  # equal compute: the budget is the least total compute of any run; each run at its last RD
  # point within it (with two steps, only the cheapest model's runs have one)
  equal = pd.read_csv(out / "equal_compute.csv")
  totals = training.groupby("run_id")["cpu_s"].max()
  assert equal["budget_cpu_s"].iloc[0] == pytest.approx(totals.min())
  assert (equal["cpu_s"] <= totals.min()).all() and len(equal) >= 1
  cheapest = training.loc[training["run_id"] == totals.idxmin(), "curve"].iloc[0]
  assert cheapest in set(equal["curve"])
  against = pd.read_csv(out / "bd_vs_classical.csv")
  assert {"jpeg", "webp"} <= set(against["anchor"])
  for jobs in (2, 4, 6):
    assert f" ended: {jobs} jobs: {jobs} finished" in result.stderr
