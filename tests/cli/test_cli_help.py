"""Every command answers --help (exit 0: what it does, its arguments or config groups, an
example), without TensorFlow's start-up lines; a missing optional extra is one line naming the
install command; a bad argument of a key=value command is one line without TensorFlow's noise."""

import os
import subprocess
import sys

import pytest

# module -> words its --help must contain (its arguments or config groups, and an example)
COMMANDS = {
  "cbexp.run": [
    "== Config groups",
    "entropy: autoregressive, charm",
    "steps: 2000000",
    "python -m cbexp.run experiment=quickstart",
  ],
  "cbexp.analysis": ["sweep_id", "anchor", "python -m cbexp.analysis sweep_id="],
  "cbexp.summary": [
    "entropy: autoregressive, charm",
    "transform: cheng2020_anchor, cheng2020_anchor_tiny, cheng2020_attn",
    "python -m cbexp.summary entropy=checkerboard",
  ],
  "cbexp.bench": [
    "images=<folder>",
    "model:",
    "default_entropy:",
    "precision:",
    "entropy: autoregressive, charm",
    "python -m cbexp.bench images=",
  ],
  "cbexp.memory": ["sizes_mp:", "budgets_mb:", "untiled_max_mp:", "python -m cbexp.memory"],
  "cbexp.codec": ["compress", "decompress", "eval", "cbexp codec compress --model"],
  "cbexp.export": ["--from", "--out DIR", "cbexp export --from"],
  "cbexp.datasets": ["download-kodak", "python -m cbexp.datasets download-kodak"],
  "cbexp.conformance": [
    "model:",
    "configs:",
    "numerics:",
    "onednn_off",
    "entropy: autoregressive, charm",
    "python -m cbexp.conformance model=",
  ],
}
# What TensorFlow prints on start-up on a machine without a GPU (C++ and Python logs).
TF_NOISE = ("cuda", "cuDNN", "TensorRT", "oneDNN", "cpu_feature_guard")


def run(*arguments, cwd):
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CBEXP_DEBUG")}
  return subprocess.run(
    [sys.executable, "-m", *arguments],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_names_the_arguments_and_an_example(module, tmp_path):
  result = run(module, "--help", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  for word in COMMANDS[module]:
    assert word in result.stdout, (word, result.stdout[:3000])
  assert not any(noise in result.stderr for noise in TF_NOISE), result.stderr[-2000:]


@pytest.mark.parametrize(
  "arguments, message",
  [
    (
      ["cbexp.summary", "entropy=hyperprior", "transform=tiny", "lmbda=[oops"],
      "cbexp summary: error: ",
    ),
    (["cbexp.bench", "repeats=zero"], "cbexp bench: error: repeats must be an integer"),
    (["cbexp.run", "entropy=hyperprior", "lmbda=abc"], "error: lmbda='abc': must be a number"),
  ],
)
def test_bad_arguments_are_one_line_without_tensorflow_noise(arguments, message, tmp_path):
  result = run(*arguments, cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert result.stderr.startswith(message), result.stderr


def test_summary_prints_without_tensorflow_noise(tmp_path):
  result = run("cbexp.summary", "entropy=hyperprior", "transform=tiny", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "trainable_parameters: " in result.stdout
  assert not any(noise in result.stderr for noise in TF_NOISE), result.stderr[-2000:]


def test_a_missing_optional_extra_is_one_line_naming_the_install_command(tmp_path):
  import importlib.util

  if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
    pytest.skip("the optuna extra is installed")
  result = run("cbexp.run", "-m", "hydra/sweeper=lr_search", "experiment=quickstart", cwd=tmp_path)
  assert result.returncode == 2
  assert result.stderr.strip() == (
    'error: hydra/sweeper=lr_search needs an optional extra: pip install -e ".[optuna]"'
  )
