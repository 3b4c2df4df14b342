"""RD during training and the comparison at equal compute, on constructed trajectories."""

import pandas as pd
import pytest

from cbexp.analysis import trajectories
from cbexp.analysis.points import AnalysisError


def constructed():
  """Two models at one lambda: 'slow' costs 3 core-seconds a step, 'fast' 1; RD points every 100
  steps up to 300 (slow) and 900 (fast) steps."""
  rows = []
  for curve, cost, steps in (("slow", 3.0, 300), ("fast", 1.0, 900)):
    for step in range(100, steps + 1, 100):
      rows.append(
        {
          "run_id": curve,
          "curve": curve,
          "curve_id": curve,
          "entropy": curve,
          "lmbda": 0.01,
          "seed": "0",
          "train_set": "t",
          "step": step,
          "cpu_s": cost * step + 0.5,  # + tracing
          "wall_s": cost * step,
          "bpp": 1.0 / step,
          "psnr": 20 + step / 100,
          "ms_ssim": 0.9,
        }
      )
  return pd.DataFrame(rows)


def test_the_budget_is_the_compute_every_run_reached():
  assert trajectories.equal_compute_budget(constructed()) == 900.5  # both end at 900.5


def test_each_run_is_taken_at_its_last_point_within_the_budget():
  chosen = trajectories.at_budget(constructed(), budget=600.0).set_index("run_id")
  # slow: 100 steps cost 300.5, 200 cost 600.5 (> 600): step 100; fast: 500.5 <= 600 < 600.5.
  assert chosen.loc["slow", "step"] == 100
  assert chosen.loc["fast", "step"] == 500
  assert chosen.loc["fast", "psnr"] == 25.0


def test_equal_compute_points_keep_each_runs_per_image_values_at_the_chosen_step():
  trajectory = constructed()
  per_image = pd.DataFrame(
    [
      {"run_id": r.run_id, "step": r.step, "image": image, "bpp": r.bpp, "psnr": r.psnr + k}
      | {"ms_ssim": 0.9}
      for r in trajectory.itertuples()
      for k, image in enumerate(("a.png", "b.png"))
    ]
  )
  points, tables, budget = trajectories.equal_compute_points(trajectory, per_image)
  assert budget == 900.5
  assert dict(zip(points["run_id"], points["step"])) == {"fast": 900, "slow": 300}
  assert list(tables["slow"]["psnr"]) == [23.0, 24.0]
  assert set(points["eval_set"]) == {"validation images (RD during training)"}


def test_no_rd_points_is_one_clear_error():
  with pytest.raises(AnalysisError, match="rd_every"):
    trajectories.equal_compute_budget(pd.DataFrame(columns=["run_id", "cpu_s"]))


def test_the_trajectory_figure_draws_one_line_per_run_and_quantity():
  figure = trajectories.trajectory_figure(constructed())
  rate_ax, quality_ax = figure.axes
  assert len(rate_ax.lines) == 2
  assert len(quality_ax.lines) == 2 + 2 + 1  # runs, then legend entries: 2 curves, 1 lambda


def test_non_finite_rd_points_are_left_out_of_the_trajectories(tmp_path):
  """A step whose logged RD point is not finite (MLflow stores inf as the largest float) is not
  a point of the trajectory; the run's finite steps are."""
  from mlflow.tracking import MlflowClient

  uri = f"sqlite:///{tmp_path}/mlflow.db"
  client = MlflowClient(uri)
  run_id = client.create_run(client.create_experiment("t")).info.run_id
  for step, bpp in ((1, 0.5), (2, float("inf")), (3, 0.4)):
    for key, value in (("rd/bpp", bpp), ("rd/psnr", 25.0 + step), ("rd/ms_ssim", 0.9)):
      client.log_metric(run_id, key, value, step=step)
    client.log_metric(run_id, "compute/cpu_s", 10.0 * step, step=step)
  per_run = pd.DataFrame(
    [dict(run_id=run_id, curve="c", curve_id="c", entropy="c", lmbda=0.01, seed=0, train_set="t")]
  )
  trajectory, _ = trajectories.load_trajectories(uri, per_run)
  assert trajectory["step"].tolist() == [1, 3]
  assert trajectory["bpp"].tolist() == [0.5, 0.4]


def test_equal_compute_points_carry_each_runs_group_values():
  """With group_by, each point keeps its run's group value: the BD tables match a curve with
  the anchor of its own group (they stopped with KeyError: 'transform' before)."""
  groups = pd.DataFrame({"run_id": ["slow", "fast", "fast"], "transform": ["a", "b", "b"]})
  points, _, _ = trajectories.equal_compute_points(constructed(), pd.DataFrame(), groups=groups)
  assert dict(zip(points["run_id"], points["transform"])) == {"slow": "a", "fast": "b"}
  assert len(points) == 2
