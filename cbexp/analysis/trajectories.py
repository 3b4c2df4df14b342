"""RD during training, and the comparison at equal training compute.

Runs trained with ``trainer.rd_every`` log a real-bitstream RD point on their validation images
every so many steps (``rd/*``, per image ``rd_image/<image>/*``), beside the training compute
spent so far (``compute/cpu_s``: core-seconds of the training steps, ``compute/wall_s``).

Equal compute is measured in core-seconds (process CPU time over all threads), not wall time or
MACs: wall time depends on what else the machine ran at the time, and MAC counts leave out what a
step costs beyond its multiply-adds (ChARM's many small slice networks, the range of
non-convolution ops). The budget is the compute every run reached (the least, over runs, of the
compute at their last RD point); each run is taken at its last RD point within the budget.
These points are on the validation images, never the test images.
"""

import math
import sys

import pandas as pd

from cbexp.analysis.points import AnalysisError
from cbexp.evaluation.metrics import ms_ssim_db

RD_KEYS = {"bpp": "rd/bpp", "psnr": "rd/psnr", "ms_ssim": "rd/ms_ssim"}
COMPUTE_KEYS = {"cpu_s": "compute/cpu_s", "wall_s": "compute/wall_s"}
PER_IMAGE_PREFIX = "rd_image/"  # cbexp.training.rd_points writes rd_image/<image>/<key>
RUN_COLUMNS = ("run_id", "curve", "curve_id", "entropy", "lmbda", "seed", "train_set")


def _history(client, run_id, key):
  return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def load_trajectories(uri, per_run):
  """-> (trajectory, per_image): one row per (run, RD step) with the run's columns, ``step``,
  the compute so far and the RD point; and one row per (run, step, image). Empty frames when no
  run logged RD points."""
  from mlflow.tracking import MlflowClient

  client = MlflowClient(uri)
  rows, image_rows = [], []
  for run in per_run.itertuples():
    rd = {name: _history(client, run.run_id, key) for name, key in RD_KEYS.items()}
    if not rd["bpp"]:
      continue
    compute = {name: _history(client, run.run_id, key) for name, key in COMPUTE_KEYS.items()}
    base = {column: getattr(run, column) for column in RUN_COLUMNS}
    for step in sorted(rd["bpp"]):
      if not all(_finite(rd[k].get(step)) for k in ("bpp", "psnr")):
        continue  # a diverged step: MLflow keeps inf as the largest float, not a point to draw
      row = dict(base, step=step, **{k: rd[k].get(step) for k in rd})
      row.update({k: compute[k].get(step) for k in compute})
      rows.append(row)
    image_rows += _per_image_rows(client, run.run_id)
  trajectory = pd.DataFrame(rows)
  if not trajectory.empty:
    trajectory["ms_ssim_db"] = ms_ssim_db(trajectory["ms_ssim"].to_numpy(dtype=float))
  return trajectory, pd.DataFrame(image_rows)


def _finite(value):
  return value is not None and math.isfinite(value) and abs(value) < sys.float_info.max


def _per_image_rows(client, run_id):
  keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(PER_IMAGE_PREFIX)]
  values = {}
  for key in keys:
    image, quantity = key[len(PER_IMAGE_PREFIX) :].rsplit("/", 1)
    for step, value in _history(client, run_id, key).items():
      values.setdefault((step, image), {})[quantity] = value
  return [
    {"run_id": run_id, "step": step, "image": image, **quantities}
    for (step, image), quantities in sorted(values.items())
  ]


def equal_compute_budget(trajectory, measure="cpu_s"):
  """The compute every run reached: the least, over runs, of the compute at their last RD
  point."""
  if trajectory.empty or trajectory[measure].isna().all():
    raise AnalysisError("no RD points with compute during training (trainer.rd_every unset?)")
  return float(trajectory.groupby("run_id")[measure].max().min())


def at_budget(trajectory, budget, measure="cpu_s"):
  """Each run's last RD point whose compute is within ``budget`` -> one row per run (runs with
  no point within it are left out)."""
  within = trajectory[trajectory[measure] <= budget]
  last = within.sort_values(["run_id", measure]).groupby("run_id", sort=False).tail(1)
  return last.reset_index(drop=True)


def equal_compute_points(trajectory, per_image, budget=None, measure="cpu_s", groups=None):
  """-> (per-run points at equal compute, {run_id: per-image table at that point}, budget):
  the same shapes as the test-set evaluation's, so the BD machinery applies unchanged.
  ``groups``: the runs' group_by values (``run_id`` and a column per key), added to each point so
  that each curve meets the anchor of its own group."""
  budget = equal_compute_budget(trajectory, measure) if budget is None else budget
  chosen = at_budget(trajectory, budget, measure)
  if groups is not None:
    chosen = chosen.merge(groups.drop_duplicates("run_id"), on="run_id", how="left")
  points = chosen.assign(
    source="cbexp",
    kind="measured",
    seeds=1,
    eval_set="validation images (RD during training)",
    num_images=float("nan"),
  )
  tables = {}
  if not per_image.empty:
    for row in chosen.itertuples():
      match = per_image[(per_image["run_id"] == row.run_id) & (per_image["step"] == row.step)]
      if not match.empty:
        tables[row.run_id] = match[["image", "bpp", "psnr", "ms_ssim"]].reset_index(drop=True)
  for column in ("encode_time_mean", "decode_time_mean", "encode_time_median"):
    points[column] = float("nan")
  points["decode_time_median"] = float("nan")
  return points, tables, budget


def trajectory_figure(trajectory, measure="cpu_s", title=None, caption=None):
  """-> a Figure of the RD points during training against compute: validation bpp (left) and
  PSNR (right), one line per run; colour: the curve (entropy model), line style: lambda."""
  import matplotlib
  from matplotlib.figure import Figure

  fig = Figure(figsize=(9.6, 4.2), dpi=150, layout="constrained")
  rate_ax, quality_ax = fig.subplots(1, 2)
  colors = matplotlib.colormaps["tab10"].colors
  curves = sorted(trajectory["curve_id"].unique())
  lmbdas = sorted(trajectory["lmbda"].unique())
  styles = ["-", "--", ":", "-."]
  for run_id, rows in trajectory.groupby("run_id", sort=True):
    rows = rows.sort_values(measure)
    color = colors[curves.index(rows["curve_id"].iloc[0]) % len(colors)]
    style = styles[lmbdas.index(rows["lmbda"].iloc[0]) % len(styles)]
    for ax, quantity in ((rate_ax, "bpp"), (quality_ax, "psnr")):
      ax.plot(rows[measure] / 3600, rows[quantity], style, color=color, lw=1, marker=".", ms=3)
  for ax, label in ((rate_ax, "bpp (validation)"), (quality_ax, "PSNR (validation) [dB]")):
    ax.set_xlabel("training compute [core-hours]" if measure == "cpu_s" else "training [hours]")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
  for i, curve in enumerate(curves):
    quality_ax.plot([], [], "-", color=colors[i % len(colors)], label=curve)
  for j, lmbda in enumerate(lmbdas):
    quality_ax.plot([], [], styles[j % len(styles)], color="grey", label=f"lmbda {lmbda:g}")
  quality_ax.legend(fontsize="small", framealpha=0.9)
  if title:
    fig.suptitle(title)
  if caption:
    fig.supxlabel(caption, fontsize="small")
  return fig
