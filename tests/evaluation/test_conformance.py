"""``python -m cbexp.conformance``: the decode conformance matrix. A tiny untrained model on one
small image, decoded in fresh processes: the encoder's own configuration must decode identically
with 0 mismatches; a deliberately broken decoder (every scale index + 1) must be counted by the
teacher-forced measurement."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from helpers.runs import environment, write_images


def conformance(arguments, cwd, timeout=900):
  return subprocess.run(
    [sys.executable, "-m", "cbexp.conformance", *arguments],
    cwd=cwd,
    env=environment(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def tiny_conformance(tmp_path, *arguments):
  """The matrix of an untrained tiny hyperprior on one 64x128 image, written to tmp_path/out."""
  images = write_images(tmp_path / "images", [(64, 128)])
  model = ["entropy=hyperprior", "transform=tiny", "entropy.hidden_filters=[16,16]"]
  return conformance([*model, f"images={images}", f"out={tmp_path / 'out'}", *arguments], tmp_path)


def test_same_configuration_matches_and_a_perturbed_decoder_is_detected(tmp_path):
  out = tmp_path / "out"
  result = tiny_conformance(
    tmp_path, "configs=reference,index_offset", f"mlflow=sqlite:///{tmp_path}/mlflow.db"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = pd.read_csv(out / "conformance.csv").set_index("config")
  reference, broken = summary.loc["reference"], summary.loc["index_offset"]
  # the encoder's configuration in a fresh process: the same image, not one mismatch
  assert reference.images == 1 and reference.images_identical == 1
  assert reference.images_corrupted == 0 and reference.mismatches_per_million == 0
  assert reference.symbols == 64 * 128 // 256 * 40  # y of the tiny transform: 40 channels
  # every scale index + 1: the teacher-forced count sees it, independently of the real decode
  assert broken.index_mismatches > 0 and broken.mismatches_per_million > 0
  per_image = pd.read_csv(out / "conformance_per_image.csv")
  assert set(per_image.config) == {"reference", "index_offset"}
  report = json.loads((out / "conformance.json").read_text())
  assert report["command"].startswith("python -m cbexp.conformance ")
  assert report["machine"]["cpu"] and set(report["process_wall_s"]) >= {"encode", "reference"}
  assert "reference" in result.stdout and "index_offset" in result.stdout  # the printed table
  from mlflow.tracking import MlflowClient

  client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
  runs = client.search_runs([client.get_experiment_by_name("conformance").experiment_id])
  assert {r.data.params["config"] for r in runs} == {"reference", "index_offset"}
  assert all("conformance/mismatches_per_million" in r.data.metrics for r in runs)


def test_exact_numerics_decode_the_same_symbols_in_another_instruction_set(tmp_path):
  """The configurations that change the kernels for real: oneDNN capped at SSE4.1 (another
  instruction set on an AVX2 or AVX-512 CPU) and a process pinned to one CPU. With exact
  numerics every coded scale index and symbol is the encoder's and no image is corrupted (the
  synthesis stays float: an image may differ by a level, reported as pixels differ)."""
  out = tmp_path / "out"
  result = tiny_conformance(tmp_path, "numerics=exact", "configs=sse41,one_cpu")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = pd.read_csv(out / "conformance.csv").set_index("config")
  assert set(summary.index) == {"sse41", "one_cpu"}
  assert (summary.symbols == 64 * 128 // 256 * 40).all()
  assert (summary.mismatches_per_million == 0).all() and (summary.index_mismatches == 0).all()
  assert (summary.images_corrupted == 0).all()
  per_image = pd.read_csv(out / "conformance_per_image.csv").set_index("config")
  assert per_image.loc["one_cpu", "cpus_available"] == 1


def test_record_comparison_counts_indexes_and_symbols():
  from cbexp.evaluation.conformance import compare_records

  encoder = [
    {
      "indexes": np.array([1, 2, 3]),
      "symbols": np.array([0, 1, -1]),
      "means": np.zeros(3, np.float32),
    }
  ]
  decoder = [
    {
      "indexes": np.array([1, 3, 3]),
      "symbols": np.array([0, 1, 0]),
      "means": np.full(3, 1e-6, np.float32),
    }
  ]
  counts = compare_records(encoder, decoder)
  assert counts["symbols"] == 3 and counts["positions_mismatched"] == 2
  assert counts["index_mismatches"] == 1 and counts["symbol_mismatches"] == 1
  assert counts["first_mismatch_string"] == 0 and 0 < counts["max_abs_mean_diff"] < 1e-5
  assert compare_records(encoder, encoder)["positions_mismatched"] == 0


def test_bad_arguments_are_one_line(tmp_path):
  images = write_images(tmp_path / "images", [(64, 64)])
  for arguments, message in [
    (
      ["entropy=hyperprior", f"images={images}", "configs=warp_drive"],
      "cbexp conformance: error: unknown configuration 'warp_drive'",
    ),
    (
      ["entropy=hyperprior", f"images={images}", "numerics=fixed"],
      "cbexp conformance: error: numerics must be among",
    ),
    ([f"images={images}"], "cbexp conformance: error: no models"),
    (["entropy=hyperprior", "max_images=two"], "cbexp conformance: error: max_images must"),
    (
      ["model=/nonexistent/model", f"images={images}"],
      "cbexp conformance: error: /nonexistent/model: no such model",
    ),
  ]:
    result = conformance(arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(message), result.stderr


def test_the_numerics_choices_are_the_exact_paths(tmp_path):
  import pytest

  from cbexp.config import compose
  from cbexp.entropy import exact
  from cbexp.evaluation import conformance

  def numerics(values):
    cfg = compose([f"numerics=[{','.join(values)}]", f"images={tmp_path}"], "conformance")
    return conformance.options(cfg, ["entropy=hyperprior"]).numerics

  assert numerics(exact.NUMERICS) == list(exact.NUMERICS)
  with pytest.raises(conformance.ConformanceError, match="numerics must be among"):
    numerics(["fixed"])
