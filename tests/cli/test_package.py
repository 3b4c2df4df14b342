"""A regular (non-editable) install runs: the wheel carries the configs, and its commands work
from any working directory."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The wheel built from a copy of the sources, installed (without dependencies: they are this
  environment's) into its own folder; -> (environment with that folder first, a working folder
  outside the repository)."""
  root = tmp_path_factory.mktemp("package")
  source = root / "source"
  shutil.copytree(
    os.path.join(REPO, "cbexp"), source / "cbexp", ignore=shutil.ignore_patterns("__pycache__")
  )
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run(
    pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
    check=True,
    timeout=600,
  )
  (wheel,) = (root / "dist").glob("cbexp-*.whl")
  subprocess.run(
    pip + ["install", "--no-deps", "--target", str(root / "site"), str(wheel)],
    check=True,
    timeout=600,
  )
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(root / "site"), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("MLFLOW_TRACKING_URI", None)
  return env, elsewhere, root / "site"


def run(env, cwd, *arguments, timeout=600):
  return subprocess.run(
    [sys.executable, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def test_the_installed_package_is_used_and_carries_its_configs(installed):
  env, elsewhere, site = installed
  result = run(env, elsewhere, "-c", "import cbexp.config as c; print(c.CONF_DIR)")
  assert result.returncode == 0, result.stderr[-2000:]
  conf = result.stdout.strip()
  assert conf.startswith(str(site)), conf
  assert os.path.isfile(os.path.join(conf, "config.yaml"))
  assert os.path.isfile(os.path.join(conf, "experiment", "quickstart.yaml"))


def test_summary_and_a_short_quickstart_run_from_another_folder(installed):
  env, elsewhere, _ = installed
  summary = run(env, elsewhere, "-m", "cbexp.summary", "entropy=checkerboard", "transform=tiny")
  assert summary.returncode == 0, summary.stderr[-2000:]
  assert "trainable_parameters: " in summary.stdout
  quickstart = run(
    env,
    elsewhere,
    "-m",
    "cbexp.run",
    "experiment=quickstart",
    "trainer.steps=2",
    "trainer.log_every=1",
    "trainer.val_every=2",
    "trainer.checkpoint_every=2",
    "eval.max_images=1",
  )
  assert quickstart.returncode == 0, quickstart.stderr[-3000:]
  assert "done: eval bpp" in quickstart.stderr
  # Logging the MLflow model is quiet: no library warnings, download bars or TensorFlow notes.
  for noise in ("Warning", "Downloading artifacts", "Importing a function"):
    assert noise not in quickstart.stderr, quickstart.stderr[-3000:]
  from mlflow.tracking import MlflowClient

  client = MlflowClient(f"sqlite:///{elsewhere}/mlflow.db")
  (record,) = client.search_runs([client.get_experiment_by_name("cbexp").experiment_id])
  # The quickstart evaluates on a photo it trained on, and its record says so.
  assert record.data.tags["eval_overlaps_train"] == "1"
  assert "the numbers show that the pipeline works" in record.data.tags["mlflow.note.content"]
