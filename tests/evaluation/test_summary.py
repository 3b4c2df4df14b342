"""Issue 2: the paper configuration reproduces the published sizes to the parameter, and
``python -m cbexp.summary`` prints them."""

import re
import subprocess
import sys

import pytest

from cbexp.evaluation.size import breakdown, summarize
from helpers.models import tiny_overrides

M, N_HYPER = 320, 192


def slice_transform(c_in, c_out, hidden=(224, 128)):
  """5x5 -> 224, 5x5 -> 128, 3x3 -> c_out, biases; kernel_parameter 'variable' = real taps."""
  return (
    25 * c_in * hidden[0]
    + hidden[0]
    + 25 * hidden[0] * hidden[1]
    + hidden[1]
    + 9 * hidden[1] * c_out
    + c_out
  )


HYPER_SYNTHESIS = (25 * 192 * 192 + 192) + (25 * 192 * 256 + 256) + (9 * 256 * 320 + 320)


def paper_summary(model_factory, entropy):
  from cbexp.config import compose

  model = model_factory([f"entropy={entropy}"])
  return model, summarize(model, compose([f"entropy={entropy}"]))


def printed_total(text):
  return int(re.search(r"^trainable_parameters: (\d+)$", text, re.M).group(1))


@pytest.mark.slow
def test_charm_has_the_published_size(model_factory):
  model, text = paper_summary(model_factory, "charm")
  total = printed_total(text)
  assert round(total / 1e6, 1) == 116.3
  assert total == 116301699
  parts = breakdown(model)
  # 10 slices, support min(i, 5) slices of 32 channels: sum of support sizes = 35 slices.
  support = [min(i, 5) * 32 for i in range(10)]
  assert parts["entropy_model"]["slice_mean_scale"] == 2 * sum(
    slice_transform(M + s, 32) for s in support
  )
  assert parts["entropy_model"]["lrp"] == sum(slice_transform(M + s + 32, 32) for s in support)
  assert parts["hyper_transforms"]["hyper_synthesis"] == 2 * HYPER_SYNTHESIS


@pytest.mark.slow
def test_checkerboard_has_the_published_size(model_factory):
  model, text = paper_summary(model_factory, "checkerboard")
  total = printed_total(text)
  assert round(total / 1e6, 1) == 26.4
  assert total == 26370403
  parts = breakdown(model)["entropy_model"]
  assert parts["context_model"] == 25 * M * 2 * M + 2 * M  # whole 5x5 kernel counted
  assert parts["entropy_parameters"] == (3 * M * 3 * M + 3 * M) + (3 * M * 2 * M + 2 * M) + (
    2 * M * 2 * M + 2 * M
  )
  assert parts["lrp"] == slice_transform(M, M)


@pytest.mark.slow
def test_summary_breakdown_adds_up_and_names_taps(model_factory):
  _, text = paper_summary(model_factory, "checkerboard")
  components = re.findall(
    r"^(transforms|hyper_transforms|entropy_model|hyperprior): (\d+)$", text, re.M
  )
  assert [c for c, _ in components] == [
    "transforms",
    "hyper_transforms",
    "entropy_model",
    "hyperprior",
  ]
  assert sum(int(n) for _, n in components) == printed_total(text)
  taps = int(re.search(r"^kernel_taps_parameters: (\d+)", text, re.M).group(1))
  assert taps < printed_total(text)  # RDFT stores more numbers than the kernels have taps


def test_summary_command_prints_the_exact_count():
  result = subprocess.run(
    [sys.executable, "-m", "cbexp.summary", *tiny_overrides("checkerboard")],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  from cbexp.config import build_model, compose

  expected = sum(
    int(v.shape.num_elements())
    for v in build_model(compose(tiny_overrides("checkerboard"))).trainable_variables
  )
  assert printed_total(result.stdout) == expected


def test_summary_command_rejects_unknown_entropy_model_in_one_line():
  result = subprocess.run(
    [sys.executable, "-m", "cbexp.summary", "entropy=nope"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  error_lines = [
    line for line in result.stderr.splitlines() if line.startswith("cbexp summary: error:")
  ]
  assert len(error_lines) == 1 and "entropy/nope" in error_lines[0] and "charm" in error_lines[0]
