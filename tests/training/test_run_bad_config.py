"""Bad configuration stops ``python -m cbexp.run`` with one line on stderr and exit status 2,
before any training (no tracking store, no checkpoint is created)."""

import pytest

from helpers.runs import free_port, run_cbexp, tiny_run_overrides, write_images


def replace(arguments, **values):
  keys = {f"{k.replace('__', '.')}=" for k in values}
  kept = [a for a in arguments if not any(a.startswith(k) for k in keys)]
  return kept + [f"{k.replace('__', '.')}={v}" for k, v in values.items()]


def cases(tmp_path):
  base = tiny_run_overrides(tmp_path)
  (tmp_path / "empty").mkdir()
  small = write_images(tmp_path / "small", [(64, 64), (100, 60), (64, 64)])
  port = free_port()  # nothing listens there
  return {
    "unknown entropy": (replace(base, entropy="charmm"), "unknown entropy model 'charmm'"),
    "folder with no images": (replace(base, dataset__path=tmp_path / "empty"), "no images found"),
    "image smaller than the patch": (
      replace(base, dataset__path=small, trainer__patch_size=128),
      "image smaller than the 128x128 patch",
    ),
    "unreachable tracking URI": (
      replace(base, tracking__uri=f"http://127.0.0.1:{port}"),
      f"tracking.uri http://127.0.0.1:{port}: MLflow server unreachable",
    ),
    "patch not a multiple of 64": (
      replace(base, trainer__patch_size=100),
      "trainer.patch_size 100: must be a multiple of 64",
    ),
    "lmbda not a number": (replace(base, lmbda="abc"), "lmbda='abc': must be a number"),
    "negative lmbda": (replace(base, lmbda=-1), "lmbda=-1: must be positive"),
    "zero lmbda": (replace(base, lmbda=0), "lmbda=0: must be positive"),
    "negative memory budget": (
      replace(base, memory_budget_mb=-1),
      "memory_budget_mb=-1: must be 0 (untiled) or more",
    ),
    "steps not an integer": (
      replace(base, trainer__steps="abc"),
      "trainer.steps='abc': must be an integer",
    ),
    "zero filters": (
      replace(base, transform__num_filters=0),
      "transform.num_filters=0: must be positive",
    ),
    "unsupported tracking URI": (
      replace(base, tracking__uri="ftp://x/y"),
      "tracking.uri ftp://x/y: unsupported scheme 'ftp'",
    ),
    "unknown precision": (
      replace(base, trainer__precision="float8"),
      "trainer.precision: unknown precision 'float8' (float32, mixed_bfloat16, mixed_float16)",
    ),
    "run_dir is a file": (
      replace(base, run_dir=tmp_path / "train" / "im00.png"),
      f"run_dir {tmp_path}/train/im00.png: exists and is not a folder",
    ),
  }


@pytest.mark.parametrize(
  "case",
  [
    "unknown entropy",
    "folder with no images",
    "image smaller than the patch",
    "unreachable tracking URI",
    "patch not a multiple of 64",
    "lmbda not a number",
    "negative lmbda",
    "zero lmbda",
    "negative memory budget",
    "steps not an integer",
    "zero filters",
    "unsupported tracking URI",
    "unknown precision",
    "run_dir is a file",
  ],
)
def test_bad_config_gives_one_line_before_training(case, tmp_path):
  arguments, expected = cases(tmp_path)[case]
  result = run_cbexp(arguments, cwd=tmp_path, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "mlflow.db").exists()
  assert not list(tmp_path.glob("outputs/runs/*/checkpoints"))


def test_multi_worker_with_a_malformed_tf_config_is_one_line(tmp_path):
  import subprocess

  from helpers.runs import command, environment

  env = dict(environment(), TF_CONFIG='{"cluster": {"worker": ["localhost:1"]')
  arguments = tiny_run_overrides(tmp_path) + ["trainer.strategy=multi_worker"]
  result = subprocess.run(
    command(arguments), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: TF_CONFIG: not valid JSON ("), lines


def test_a_diverging_run_stops_is_marked_failed_and_keeps_its_finite_checkpoint(tmp_path):
  """A learning rate of 1e12: the loss goes non-finite; the run stops with one line, its MLflow
  run is FAILED, no non-finite value was logged and every kept checkpoint is finite."""
  import math

  import numpy as np
  import tensorflow as tf

  from helpers.runs import experiment_runs

  arguments = tiny_run_overrides(tmp_path, steps=40, checkpoint_every=2) + [
    "schedule=constant",
    "schedule.rates=[1e12]",
  ]
  result = run_cbexp(arguments, cwd=tmp_path, timeout=600)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert any(line.startswith("error: non-finite") for line in lines), lines[-3:]
  client, (run,) = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  assert run.info.status == "FAILED"
  for key in ("train/loss", "train/psnr"):
    assert all(math.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, key))
  for index in tmp_path.glob("outputs/runs/*/checkpoints/ckpt-*.index"):
    reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
    for name in reader.get_variable_to_shape_map():
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        assert np.isfinite(value).all(), name
