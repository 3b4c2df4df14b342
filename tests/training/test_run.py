"""``python -m cbexp.run`` end to end on a tiny model: killed with SIGKILL after a checkpoint,
started again with the same command, it finishes in the SAME MLflow run with every training
step logged exactly once; the run carries the whole MLflow schema, and a real ``mlflow server``
serves it over HTTP."""

import glob
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from helpers.codec_cli import run_codec
from helpers.runs import (
  PER_IMAGE_COLUMNS,
  SCHEMA_EVAL,
  SCHEMA_TAGS,
  SCHEMA_TRAIN,
  SCHEMA_VAL,
  command,
  environment,
  experiment_runs,
  free_port,
  run_cbexp,
  tiny_run_overrides,
)

STEPS = 24
RD_EVERY = 8


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
  """Starts a run, SIGKILLs it once a checkpoint exists, runs the same command again."""
  tmp_path = tmp_path_factory.mktemp("resume")
  arguments = tiny_run_overrides(tmp_path, entropy="hyperprior", steps=STEPS, rd_every=RD_EVERY)
  uri = f"sqlite:///{tmp_path}/mlflow.db"
  process = subprocess.Popen(
    command(arguments),
    cwd=tmp_path,
    env=environment(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 600
  # The manager's state file names a checkpoint only once its data and index are written; the
  # .index file alone appears earlier, and a kill right then leaves nothing to resume from.
  while not glob.glob(f"{tmp_path}/outputs/runs/*/checkpoints/checkpoint"):
    assert process.poll() is None, f"run ended before its first checkpoint: {process.stderr.read()}"
    assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  (run_dir,) = glob.glob(f"{tmp_path}/outputs/runs/*")
  run_id = json.loads(open(f"{run_dir}/mlflow_run.json").read())["run_id"]
  client = MlflowClient(uri)
  before = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}

  second = run_cbexp(arguments, cwd=tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  return {
    "tmp_path": tmp_path,
    "uri": uri,
    "run_id": run_id,
    "run_dir": run_dir,
    "before": before,
    "stderr": second.stderr,
  }


def test_resume_continues_the_same_run_and_step(resumed_run):
  client, runs = experiment_runs(resumed_run["uri"])
  assert [r.info.run_id for r in runs] == [resumed_run["run_id"]]  # no second run
  match = re.search(r"resuming from \S+ at step (\d+)", resumed_run["stderr"])
  assert match, resumed_run["stderr"][-2000:]
  resumed_at = int(match.group(1))
  assert 4 <= resumed_at < STEPS and resumed_at % 4 == 0
  history = client.get_metric_history(resumed_run["run_id"], "train/loss")
  steps = sorted(m.step for m in history)
  assert steps == list(range(2, STEPS + 1, 2))  # every logged step once: none lost, none twice
  values = {m.step: m.value for m in history}
  assert resumed_run["before"] and all(values[s] == v for s, v in resumed_run["before"].items())
  assert max(resumed_run["before"]) <= resumed_at
  assert sorted(
    m.step for m in client.get_metric_history(resumed_run["run_id"], "val/loss")
  ) == list(range(4, STEPS + 1, 4))


def test_rd_points_during_training_are_real_bytes_logged_once(resumed_run):
  """Every rd_every steps, an RD point on the validation image (the last training image,
  96x64): its bpp is 8 x the bytes of a real .cbx file; at the last step the model is the
  saved one, so the point equals the size of the file `cbexp codec` writes with it."""
  client, run_id = MlflowClient(resumed_run["uri"]), resumed_run["run_id"]
  history = client.get_metric_history(run_id, "rd/bpp")
  assert sorted(m.step for m in history) == list(range(RD_EVERY, STEPS + 1, RD_EVERY))
  rd = {m.step: m.value for m in history}
  pixels = 96 * 64
  for value in rd.values():
    assert value * pixels / 8 == pytest.approx(round(value * pixels / 8), abs=1e-6)  # whole bytes
  tmp = resumed_run["tmp_path"]
  model = f"{resumed_run['run_dir']}/model"
  written = run_codec(
    "compress", "--model", model, tmp / "train" / "im02.png", tmp / "val.cbx", cwd=tmp
  )
  assert written.returncode == 0, written.stderr[-2000:]
  assert rd[STEPS] == 8 * (tmp / "val.cbx").stat().st_size / pixels
  per_image = client.get_metric_history(run_id, "rd_image/im02.png/bpp")
  assert {m.step: m.value for m in per_image} == rd


def test_training_compute_is_logged_once_per_step_and_resumes(resumed_run):
  """compute/cpu_s goes on from the checkpoint's total after the kill: it never falls back,
  and no step is logged twice."""
  client, run_id = MlflowClient(resumed_run["uri"]), resumed_run["run_id"]
  for key in ("compute/cpu_s", "compute/wall_s", "compute/rd_s"):
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    steps = [step for step, _ in history]
    assert steps == list(range(2, STEPS + 1, 2)), key  # log_every 2; RD steps are among them
    values = [value for _, value in history]
    assert all(b >= a for a, b in zip(values, values[1:])), (key, history)
    assert values[-1] > 0, key
  (checkpoint_folder,) = glob.glob(f"{resumed_run['run_dir']}/checkpoints")
  totals = json.loads(pathlib.Path(checkpoint_folder, "compute.json").read_text())
  assert str(STEPS) in totals and len(totals) <= 3  # max_checkpoints 2, and one more


def test_run_logs_the_schema(resumed_run):
  client = MlflowClient(resumed_run["uri"])
  run = client.get_run(resumed_run["run_id"])
  assert run.info.status == "FINISHED"
  metrics = run.data.metrics
  for key in SCHEMA_TRAIN + SCHEMA_VAL + SCHEMA_EVAL + ("model/trainable_parameters",):
    assert key in metrics and math.isfinite(metrics[key]), key
  assert metrics["eval/num_images"] == 1 and metrics["eval/bpp"] > 0
  assert 0 < metrics["eval/ms_ssim"] <= 1 and metrics["eval/encode_time_median"] > 0
  for key in SCHEMA_TAGS:
    assert run.data.tags.get(key), key
  assert run.data.tags["entropy"] == "hyperprior" and run.data.tags["transform"] == "tiny"
  assert run.data.tags["eval_set"] == "folder" and "sweep_id" not in run.data.tags
  assert run.data.params["trainer.steps"] == str(STEPS)
  assert run.data.params["entropy.name"] == "hyperprior"
  assert run.data.params["lmbda"] == "0.01"
  # the learning rate follows the paper schedule: 1e-4, then 1e-5 from step 0.9 * STEPS
  lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/lr")}
  assert lrs[2] == pytest.approx(1e-4) and lrs[STEPS] == pytest.approx(1e-5)

  artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert {"config.yaml", "eval", "summary.txt"} <= artifacts
  local = client.download_artifacts(
    run.info.run_id, "eval/per_image.csv", str(resumed_run["tmp_path"] / "download")
  )
  table = pd.read_csv(local)
  assert list(table.columns) == PER_IMAGE_COLUMNS and len(table) == 1
  assert table.loc[0, "bpp"] == pytest.approx(8 * table.loc[0, "bytes"] / 192**2)
  assert metrics["eval/bpp"] == pytest.approx(table.loc[0, "bpp"])
  # The model is an MLflow model (MLmodel, pyfunc) holding the model directory and the export.
  import mlflow

  mlflow.set_tracking_uri(resumed_run["uri"])  # logged models resolve through the global URI
  try:
    model = pathlib.Path(
      mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/model", dst_path=str(resumed_run["tmp_path"] / "mlflow_model")
      )
    )
  finally:
    mlflow.set_tracking_uri(None)
  for name in (
    "MLmodel",
    "artifacts/model/config.yaml",
    "artifacts/model/weights",
    "artifacts/export/saved_model.pb",
  ):
    assert (model / name).exists(), name
  assert "python_function" in (model / "MLmodel").read_text()
  # The export codes within the run's memory budget (memory_budget_mb=0 here: untiled).
  reader = tf.train.load_checkpoint(str(model / "artifacts/export/variables/variables"))
  (budget,) = [k for k in reader.get_variable_to_shape_map() if k.startswith("memory_budget_mb/")]
  assert reader.get_tensor(budget) == 0


def test_run_record_is_mlflow_native(resumed_run):
  """MLflow's own source, user and git tags, the command line, a description, and the image
  sets as dataset inputs (named, with a digest of their bytes, by context)."""
  client = MlflowClient(resumed_run["uri"])
  run = client.get_run(resumed_run["run_id"])
  tags = run.data.tags
  # The dashboard opens the experiment in its "Model training" view, not the GenAI one.
  assert (
    client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"]
    == "custom_model_development"
  )
  assert tags["mlflow.source.name"].endswith("cbexp/run.py") and tags["mlflow.user"]
  assert tags["mlflow.source.type"] == "LOCAL"
  assert tags["mlflow.source.git.commit"] == tags["git_commit"] != "unknown"
  assert tags["cbexp.command"].startswith("python -m cbexp.run transform=tiny entropy=hyperprior")
  assert "trainer.steps=24" in tags["cbexp.overrides"]
  assert tags["mlflow.note.content"].startswith("hyperprior, lmbda 0.01, 24 steps. Trains on")
  assert tags["eval_overlaps_train"] == "0"
  inputs = {
    next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
    for i in run.inputs.dataset_inputs
  }
  assert sorted(inputs) == ["evaluation", "training", "validation"]
  assert json.loads(inputs["training"].profile) == {"num_images": 2}
  assert json.loads(inputs["evaluation"].source)["files"] == ["im00.png"]
  assert len({d.digest for d in inputs.values()}) == 3 and all(
    len(d.digest) == 16 for d in inputs.values()
  )


def test_same_command_after_completion_does_nothing(resumed_run):
  again = run_cbexp(
    tiny_run_overrides(
      resumed_run["tmp_path"], entropy="hyperprior", steps=STEPS, rd_every=RD_EVERY
    ),
    cwd=resumed_run["tmp_path"],
    timeout=120,
  )
  assert again.returncode == 0 and "run already complete" in again.stderr
  assert len(experiment_runs(resumed_run["uri"])[1]) == 1


def test_a_real_mlflow_server_serves_the_run(resumed_run):
  """Starts `mlflow server` on a free localhost port and reads the run over HTTP."""
  port = free_port()
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "mlflow",
      "server",
      "--backend-store-uri",
      resumed_run["uri"],
      "--host",
      "127.0.0.1",
      "--port",
      str(port),
      "--workers",
      "1",
    ],
    cwd=resumed_run["tmp_path"],
    env=environment(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 120
    while True:
      try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
          if response.status == 200:
            break
      except OSError:
        pass
      assert server.poll() is None, "mlflow server exited"
      assert time.monotonic() < deadline, "mlflow server did not come up"
      time.sleep(0.5)
    with urllib.request.urlopen(
      f"{base}/api/2.0/mlflow/runs/get?run_id={resumed_run['run_id']}", timeout=30
    ) as response:
      payload = json.loads(response.read())["run"]
    served = {m["key"]: m["value"] for m in payload["data"]["metrics"]}
    stored = MlflowClient(resumed_run["uri"]).get_run(resumed_run["run_id"]).data.metrics
    for key in SCHEMA_EVAL + SCHEMA_TRAIN:
      assert served[key] == pytest.approx(stored[key]), key
    tags = {t["key"]: t["value"] for t in payload["data"]["tags"]}
    assert tags["entropy"] == "hyperprior"
    http_client = MlflowClient(base)
    history = http_client.get_metric_history(resumed_run["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(2, STEPS + 1, 2))
  finally:  # the server and its uvicorn worker: the process group this test started
    os.killpg(server.pid, signal.SIGTERM)
    try:
      server.wait(timeout=20)
    except subprocess.TimeoutExpired:
      os.killpg(server.pid, signal.SIGKILL)
      server.wait()


def test_run_log_holds_the_runs_history(resumed_run):
  """Messages and progress go through logging: the run directory's run.log keeps them, with
  times, across the killed and the resumed attempt."""
  text = (pathlib.Path(resumed_run["run_dir"]) / "run.log").read_text()
  assert text.count(f"MLflow run {resumed_run['run_id']} (new)") == 1
  assert text.count(f"MLflow run {resumed_run['run_id']} (resumed)") == 1
  assert re.search(r"\]\[cbexp.run\]\[INFO\] resuming from \S+ at step \d+", text)
  assert re.search(
    rf"train step {STEPS}/{STEPS} \(100%\), [\d.]+ steps/s, ETA 0:00:00; loss ", text
  )
  assert "done: eval bpp" in text


def test_progress_rate_and_eta_leave_out_the_first_step(monkeypatch, caplog):
  """The first step traces TensorFlow's graph (seconds to minutes): a rate that included it
  would promise an ETA of hours for a run of minutes."""
  import logging

  from cbexp.training import progress as progress_module

  clock = iter([0.0, 100.0, 101.0, 102.0, 103.0, 104.0])  # 100 s of tracing, then 1 step/s
  monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
  progress = progress_module.ProgressLog(total=10, start=0, interval=3.5)
  with caplog.at_level(logging.INFO, logger="cbexp.run"):
    for _ in range(5):
      progress.update(1)
  assert caplog.messages == ["train step 5/10 (50%), 1.00 steps/s, ETA 0:00:05"]


PYFUNC_PREDICT = """
import sys
import numpy as np
from PIL import Image
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(np.asarray(Image.open(sys.argv[2]).convert("RGB")))
np.save(sys.argv[3], out["reconstruction"])
print(float(out["bpp"][0]))
"""


def test_the_runs_model_is_an_mlflow_model_and_registers(resumed_run):
  """``mlflow.pyfunc.load_model("runs:/<id>/model")`` in a fresh process gives the reconstruction
  and bpp of ``cbexp.codec``; registered, the model decodes the same file via models:/."""
  import numpy as np
  from PIL import Image

  from cbexp.tracking import pyfunc as mlflow_model

  tmp, uri, run_id = resumed_run["tmp_path"], resumed_run["uri"], resumed_run["run_id"]
  image = tmp / "eval" / "im00.png"
  env = dict(environment(), MLFLOW_TRACKING_URI=uri)

  def codec(*arguments):
    result = subprocess.run(
      [sys.executable, "-m", "cbexp.codec", *map(str, arguments)],
      cwd=tmp,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]

  codec("compress", "--model", f"runs:/{run_id}", image, tmp / "a.cbx")
  codec("decompress", "--model", f"runs:/{run_id}", tmp / "a.cbx", tmp / "a.png")
  predicted = subprocess.run(
    [
      sys.executable,
      "-c",
      PYFUNC_PREDICT,
      f"runs:/{run_id}/model",
      str(image),
      str(tmp / "pyfunc.npy"),
    ],
    cwd=tmp,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  decoded = np.asarray(Image.open(tmp / "a.png"))
  np.testing.assert_array_equal(np.load(tmp / "pyfunc.npy"), decoded)
  assert float(predicted.stdout.strip().splitlines()[-1]) == pytest.approx(
    8 * (tmp / "a.cbx").stat().st_size / 192**2
  )

  run = MlflowClient(uri).get_run(run_id)
  version = mlflow_model.register(uri, run.data.tags["model_uri"], "tiny_hyperprior")
  codec("decompress", "--model", f"models:/tiny_hyperprior/{version}", tmp / "a.cbx", tmp / "b.png")
  np.testing.assert_array_equal(np.asarray(Image.open(tmp / "b.png")), decoded)
