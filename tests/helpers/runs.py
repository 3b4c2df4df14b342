"""Helpers for the tests of ``python -m cbexp.run`` (tests/test_run*.py): tiny data, tiny
models, the command as a subprocess, a free port."""

import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image

from cbexp.evaluation import evaluate

SCHEMA_EVAL = (
  "eval/bpp",
  "eval/bpp_estimated",
  "eval/psnr",
  "eval/ms_ssim",
  "eval/ms_ssim_db",
  "eval/encode_time_median",
  "eval/decode_time_median",
  "eval/encode_time_mean",
  "eval/decode_time_mean",
  "eval/num_images",
)
SCHEMA_TRAIN = ("train/loss", "train/bpp", "train/mse", "train/psnr", "train/lr")
SCHEMA_VAL = ("val/loss", "val/bpp", "val/mse", "val/psnr")
SCHEMA_TAGS = (
  "entropy",
  "lmbda",
  "transform",
  "dataset",
  "eval_set",
  "git_commit",
  "tf_version",
  "tfc_version",
)
PER_IMAGE_COLUMNS = list(evaluate.COLUMNS)  # eval/per_image.csv


def smooth_image(height, width, seed):
  """A smooth colour image (compressible, unlike noise)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  channels = [
    np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
    for _ in range(3)
  ]
  return np.clip(np.stack(channels, -1) * 100 + 128, 0, 255).astype(np.uint8)


def write_images(folder, sizes, seed=0):
  folder.mkdir(parents=True, exist_ok=True)
  for i, (height, width) in enumerate(sizes):
    Image.fromarray(smooth_image(height, width, seed + i)).save(folder / f"im{i:02d}.png")
  return folder


def tiny_run_overrides(tmp_path, entropy="hyperprior", steps=8, **trainer):
  """A run on 3 small training images and one 192x192 eval image (MS-SSIM needs >= 161)."""
  train = write_images(tmp_path / "train", [(96, 96), (80, 128), (96, 64)])
  evaluation = write_images(tmp_path / "eval", [(192, 192)], seed=10)
  settings = {
    "steps": steps,
    "batch_size": 2,
    "patch_size": 64,
    "log_every": 2,
    "val_every": 4,
    "checkpoint_every": 4,
    **trainer,
  }
  return [
    "transform=tiny",
    f"entropy={entropy}",
    "entropy.hidden_filters=[16,16]",
    "dataset=folder",
    f"dataset.path={train}",
    "eval=folder",
    f"eval.path={evaluation}",
    "trainer=tiny",
    f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    # Untiled: a tiny model's streamed graphs take longer to trace than the run takes to train
    # (the streamed codec is tested in tests/models and tests/codec).
    "memory_budget_mb=0",
  ] + [f"trainer.{k}={v}" for k, v in settings.items()]


def environment():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  env.pop("MLFLOW_TRACKING_URI", None)
  env.pop("CBEXP_DEBUG", None)
  return env


def command(arguments):
  return [sys.executable, "-m", "cbexp.run", *arguments]


def run_cbexp(arguments, cwd, timeout=600):
  return subprocess.run(
    command(arguments), cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout
  )


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def experiment_runs(tracking_uri, experiment="cbexp"):
  from mlflow.tracking import MlflowClient

  client = MlflowClient(tracking_uri)
  experiment = client.get_experiment_by_name(experiment)
  return client, (
    [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=1000)
  )
