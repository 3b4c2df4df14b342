"""One study through the laboratory: the same command gives the same numbers twice, another seed
gives others; the run's evaluation and ``cbexp.codec eval`` are one definition; the quickstart is
followed by ``python -m cbexp.analysis`` with no arguments."""

import json
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

from helpers.runs import command, environment, experiment_runs, run_cbexp, tiny_run_overrides

SAME = (
  "eval/bpp",
  "eval/bpp_estimated",
  "eval/psnr",
  "eval/ms_ssim",
  "eval/ms_ssim_db",
  "model/trainable_parameters",
)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
  """The same command in two run directories, and once more with another seed; the three
  processes run at the same time (each with TensorFlow's default threads, as alone)."""
  tmp_path = tmp_path_factory.mktemp("repeat")
  arguments = tiny_run_overrides(tmp_path, entropy="checkerboard", steps=6)
  processes = {
    name: subprocess.Popen(
      command(arguments + [f"run_dir={tmp_path / name}", *extra]),
      cwd=tmp_path,
      env=environment(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, extra in (("a", []), ("b", []), ("seed1", ["trainer.seed=1"]))
  }
  runs = {}
  try:
    for name, process in processes.items():
      stderr = process.communicate(timeout=900)[1]
      assert process.returncode == 0, stderr[-3000:]
      runs[name] = json.loads((tmp_path / name / "mlflow_run.json").read_text())["run_id"]
  finally:  # none left running after a failure
    for process in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
  return {"tmp_path": tmp_path, "uri": f"sqlite:///{tmp_path}/mlflow.db", "runs": runs}


def history(client, run_id, key):
  return [
    (m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
  ]


def test_the_same_command_twice_gives_identical_metrics(three_runs):
  client, _ = experiment_runs(three_runs["uri"])
  a, b = (client.get_run(three_runs["runs"][k]) for k in ("a", "b"))
  for key in SAME:
    assert a.data.metrics[key] == b.data.metrics[key], key
  for key in ("train/loss", "train/bpp", "val/loss"):
    assert history(client, a.info.run_id, key) == history(client, b.info.run_id, key), key
  assert a.data.params["trainer.seed"] == "0"
  per_image = [
    pd.read_csv(three_runs["tmp_path"] / k / "eval" / "per_image.csv") for k in ("a", "b")
  ]
  columns = ["image", "bytes", "bpp", "psnr", "ms_ssim"]
  pd.testing.assert_frame_equal(per_image[0][columns], per_image[1][columns])


def test_another_seed_gives_other_metrics(three_runs):
  client, _ = experiment_runs(three_runs["uri"])
  a, other = (client.get_run(three_runs["runs"][k]) for k in ("a", "seed1"))
  assert other.data.params["trainer.seed"] == "1"
  assert history(client, a.info.run_id, "train/loss") != history(
    client, other.info.run_id, "train/loss"
  )
  assert a.data.metrics["eval/bpp"] != other.data.metrics["eval/bpp"]


def test_run_evaluation_and_codec_eval_give_the_same_numbers(three_runs):
  """One definition of each metric: the run's eval/* and per-image table are what
  ``python -m cbexp.codec eval`` prints and writes for the saved model on the same images."""
  tmp_path = three_runs["tmp_path"]
  csv = tmp_path / "codec_eval.csv"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "cbexp.codec",
      "eval",
      "--model",
      str(tmp_path / "a" / "model"),
      str(tmp_path / "eval"),
      "--csv",
      str(csv),
      "--memory-budget",  # the run's (memory_budget_mb=0: tests/helpers/runs.py): same pixels
      "0",
    ],
    capture_output=True,
    text=True,
    env=environment(),
    cwd=tmp_path,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  codec_rows = pd.read_csv(csv)
  run_rows = pd.read_csv(tmp_path / "a" / "eval" / "per_image.csv")
  columns = ["image", "height", "width", "bytes", "bpp", "psnr", "ms_ssim", "ms_ssim_db"]
  pd.testing.assert_frame_equal(codec_rows[columns], run_rows[columns])
  client, _ = experiment_runs(three_runs["uri"])
  metrics = client.get_run(three_runs["runs"]["a"]).data.metrics
  mean = next(line.split() for line in result.stdout.splitlines() if line.startswith("mean"))
  # the printed mean row: bpp, psnr, ms_ssim, ms_ssim_db (of the mean MS-SSIM), times
  assert [float(v) for v in mean[1:5]] == pytest.approx(
    [
      metrics["eval/bpp"],
      metrics["eval/psnr"],
      metrics["eval/ms_ssim"],
      metrics["eval/ms_ssim_db"],
    ],
    abs=6e-4,
  )
  # bpp counts the whole .cbx file, header and checksum included
  assert run_rows["bpp"].iloc[0] == 8 * run_rows["bytes"].iloc[0] / (192 * 192)


def test_quickstart_then_analysis_with_no_arguments(tmp_path):
  """The README's first command (shortened) and then the analysis with its defaults."""
  run = run_cbexp(
    [
      "experiment=quickstart",
      "trainer.steps=4",
      "trainer.log_every=2",
      "trainer.val_every=4",
      "trainer.checkpoint_every=4",
      "eval.max_images=1",
    ],
    cwd=tmp_path,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  analysis = subprocess.run(
    [sys.executable, "-m", "cbexp.analysis"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env=environment(),
    timeout=600,
  )
  assert analysis.returncode == 0, analysis.stderr[-3000:]
  assert "anchor: `checkerboard` (anchor=auto: no charm or hyperprior curve" in analysis.stdout
  assert "evaluation images the models also trained on" in analysis.stdout
  (folder,) = pathlib.Path(tmp_path, "analysis").iterdir()  # its own folder
  assert folder.name.startswith("cbexp-") and (folder / "rd_psnr.png").is_file()
  assert (folder / "compressai" / "checkerboard.json").is_file()
