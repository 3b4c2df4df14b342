"""A REAL sweep, end to end: 2 entropy models x 3 lambdas of tiny models trained for a few steps
through ``python -m cbexp.run -m``, evaluated with real range coding, then
``python -m cbexp.analysis`` on that sweep. The numbers only show that the pipeline works (4
training steps on three small images, one 192x192 evaluation image), not how good the models
are. The six jobs run in two processes (joblib launcher), writing one sqlite store.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbexp.analysis import figures

REPO = pathlib.Path(__file__).resolve().parent.parent
ENTROPY_MODELS = ["charm", "checkerboard"]
LMBDAS = ["0.003", "0.01", "0.03"]


def write_images(folder, sizes, seed):
  """Smooth colour images (compressible, unlike noise)."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for i, (height, width) in enumerate(sizes):
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y)) * 100 + 128
                for _ in range(3)]
    Image.fromarray(np.stack(channels, -1).astype(np.uint8)).save(folder / f"{i}.png")
  return folder


def run(module, *arguments, cwd):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("MLFLOW_TRACKING_URI", None)
  return subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sweep")
  uri = f"sqlite:///{folder / 'mlflow.db'}"
  train = write_images(folder / "train", [(96, 96), (80, 128), (96, 64)], seed=0)
  evaluation = write_images(folder / "eval", [(192, 192)], seed=1)  # MS-SSIM needs >= 161
  result = run("cbexp.run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "transform=tiny", f"entropy={','.join(ENTROPY_MODELS)}",
               "entropy.hidden_filters=[16,16]", f"lmbda={','.join(LMBDAS)}",
               "dataset=folder", f"dataset.path={train}", "eval=folder", f"eval.path={evaluation}",
               "trainer=tiny", "trainer.steps=4", "trainer.batch_size=2", "trainer.log_every=2",
               "trainer.val_every=4", "trainer.checkpoint_every=4", f"tracking.uri={uri}",
               f"hydra.sweep.dir={folder / 'sweep'}", cwd=folder)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((folder / "sweep" / "mlflow_sweep.json").read_text())
  out = folder / "analysis"
  analysis = run("cbexp.analysis", f"tracking.uri={uri}", "experiment_name=cbexp",
                 f"sweep_id={record['sweep_id']}", f"out={out}", cwd=folder)
  assert analysis.returncode == 0, analysis.stderr[-3000:]
  return {"uri": uri, "out": out, "sweep_id": record["sweep_id"]}


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
      decode["charm"] / decode["checkerboard"])
  # ChARM has more parameters than the checkerboard model, also in the tiny configuration
  assert float(comparison.loc["charm", "trainable_parameters"]) > \
      float(comparison.loc["checkerboard", "trainable_parameters"])

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
