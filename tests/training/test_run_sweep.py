"""A 2x2 Hydra multirun through the joblib launcher (2 processes writing one sqlite store):
4 runs, none lost, grouped by a parent run and a shared sweep_id tag."""

import glob
import json
import math

from helpers.runs import experiment_runs, run_cbexp, tiny_run_overrides


def test_joblib_sweep_logs_four_grouped_runs(tmp_path):
  arguments = [a for a in tiny_run_overrides(tmp_path, steps=4) if not a.startswith("entropy=")]
  result = run_cbexp(
    [
      "-m",
      "entropy=hyperprior,checkerboard",
      "lmbda=0.005,0.02",
      *arguments,
      "hydra/launcher=joblib",
      "hydra.launcher.n_jobs=2",
    ],
    cwd=tmp_path,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]

  (record,) = glob.glob(f"{tmp_path}/outputs/sweeps/*/mlflow_sweep.json")
  sweep = json.loads(open(record).read())
  client, runs = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  parents = [r for r in runs if r.data.tags.get("run_type") == "sweep_parent"]
  children = [r for r in runs if r.data.tags.get("run_type") == "train"]
  assert len(runs) == 5 and len(parents) == 1 and len(children) == 4
  parent = parents[0]
  assert parent.info.run_id == sweep["parent_run_id"] and parent.info.status == "FINISHED"
  assert parent.data.tags["sweep_id"] == sweep["sweep_id"]
  combinations = set()
  for run in children:
    assert run.data.tags["sweep_id"] == sweep["sweep_id"]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.status == "FINISHED"
    assert math.isfinite(run.data.metrics["eval/bpp"])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [
      2,
      4,
    ]
    combinations.add((run.data.tags["entropy"], run.data.params["lmbda"]))
  assert combinations == {
    (e, lm) for e in ("hyperprior", "checkerboard") for lm in ("0.005", "0.02")
  }
  # each job has its own run directory and run id
  assert len({r.data.tags["run_dir"] for r in children}) == 4
