"""experiments/gpu_benchmark.py --smoke on the CPU: every part runs with tiny models and writes
its table. Its rd_cost part trains through ``cbexp.run`` in mixed_bfloat16: that run's model
directory must hold float32 weights and its export decode what the model directory encoded,
exactly as the encoder reconstructed it (a model trained in mixed precision codes like one
trained in float32)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from cbexp.codec import model_dir
from cbexp.load import load_codec
from helpers.runs import environment

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, kodak_dir):
  out = tmp_path_factory.mktemp("gpu_smoke")
  result = subprocess.run(
    [sys.executable, str(REPO / "experiments" / "gpu_benchmark.py"), "--smoke", "--out", str(out)],
    cwd=out,
    env={**environment(), "CBEXP_KODAK_DIR": str(kodak_dir)},
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
  return out


def test_the_smoke_mode_measures_every_part_and_writes_its_table(smoke):
  report = json.loads((smoke / "gpu_benchmark.json").read_text())
  assert report["smoke"] and not report["errors"]
  assert set(report["part_seconds"]) == {"startup", "train", "decode", "rd_cost", "conformance"}
  assert 0 < report["startup"]["warm_cache_s"] and 0 < report["startup"]["cold_cache_s"]
  modes = report["train"]["checkerboard"]
  assert modes["float32"]["steps_per_s"] > 0 and modes["mixed_bfloat16"]["steps_per_s"] > 0
  assert "no GPU" in modes["tf32"]["note"]  # the CPU has no TF32: said, not measured
  assert report["decode"][0]["decode_s_median"] > 0
  (bd,) = report["rd_cost"]["bd_psnr"]
  assert bd["anchor"] == "checkerboard (trainer.precision=float32)"
  assert bd["curve"] == "checkerboard (trainer.precision=mixed_bfloat16)"
  assert np.isfinite(bd["bd_psnr_pchip_db"])
  rows = report["conformance"]["rows"]
  assert [r["numerics"] for r in rows] == ["float"]
  assert all(r["images_wrong"] == 0 for r in rows)
  table = (smoke / "gpu_benchmark.md").read_text()
  for words in ("| checkerboard | mixed_bfloat16 |", "RD cost of mixed_bfloat16", "Conformance"):
    assert words in table


def test_a_run_trained_in_mixed_bfloat16_codes_like_a_float32_model(smoke, kodak_image):
  folders = []
  for config in (smoke / "rd_cost" / "sweep").glob("*/config.yaml"):
    cfg = OmegaConf.load(config)
    if cfg.trainer.precision == "mixed_bfloat16" and cfg.lmbda == 0.02:
      folders.append(config.parent / "model")
  (folder,) = folders
  reader = tf.train.load_checkpoint(str(folder / "weights" / "model"))
  dtypes = {d for d in reader.get_variable_to_dtype_map().values() if d.is_floating}
  assert dtypes == {tf.float32}, dtypes
  _, cfg = model_dir.load_model_dir(folder, build_coders=False)
  assert cfg.trainer.precision == "mixed_bfloat16"
  image = np.asarray(kodak_image)[:128, :192]
  encoder = load_codec(str(folder))
  decoder = load_codec(str(folder.parent / "export"))
  decoded = decoder.decode(encoder.encode(image))
  np.testing.assert_array_equal(decoded, encoder.encoder_reconstruction(image))
