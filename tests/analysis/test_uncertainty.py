"""Seeds and images in the analysis: averaging runs that differ only in their seed, and the
bootstrap intervals of BD values (cbexp.analysis.uncertainty). Synthetic per-image numbers with a
known answer: a test curve that costs exactly RATE_FACTOR times the anchor's rate on every image."""

import numpy as np
import pandas as pd
import pytest

from cbexp.analysis import uncertainty
from cbexp.analysis.uncertainty import CurveSamples
from cbexp.evaluation.metrics import ms_ssim_db

LMBDAS = [0.003, 0.01, 0.03, 0.1]
IMAGES = [f"kodim{i:02d}.png" for i in range(13, 25)]
RATE_FACTOR = 1.1


def synthetic_curve(name, rate_factor=1.0, seeds=(0, 1), noise=0.02, seed=0):
  """bpp[lambda, seed, image] and psnr: images differ a lot (a factor of ~3 in rate), seeds a
  little (``noise``, relative), and the quality is a fixed function of the image and lambda, so
  that the curve costs ``rate_factor`` times the base rate at the same quality."""
  rng = np.random.default_rng(seed)
  image_factor = np.linspace(0.5, 1.5, len(IMAGES))
  base = np.array([0.15, 0.3, 0.6, 1.1])[:, None, None] * image_factor[None, None, :]
  seed_factor = 1 + noise * rng.standard_normal((1, len(seeds), 1))
  bpp = base * seed_factor * rate_factor
  psnr = np.broadcast_to(24 + 3 * np.log2(base / 0.15) - image_factor, bpp.shape).copy()
  ms_ssim = 1 - 10 ** (-psnr / 20)
  return CurveSamples(
    name, LMBDAS, list(seeds), IMAGES, {"bpp": bpp, "psnr": psnr, "ms_ssim": ms_ssim}
  )


def test_a_curve_against_itself_has_an_interval_that_contains_zero():
  curve = synthetic_curve("charm")
  result = uncertainty.bd_interval(curve, curve, resamples=200)
  assert result["bd_rate"] == pytest.approx(0, abs=1e-9)
  assert result["bd_rate_low"] <= 0 <= result["bd_rate_high"]
  assert result["bd_quality_low"] <= 0 <= result["bd_quality_high"]
  assert result["resampled"] == "images, test seeds, anchor seeds"


@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_a_known_rate_difference_is_inside_the_interval(noise):
  """The test model costs exactly RATE_FACTOR times the anchor's rate, image by image and seed
  by seed (the same noise realisation): BD-rate is +10% on all data and inside the interval."""
  anchor = synthetic_curve("charm", noise=noise, seed=1)
  test = CurveSamples(
    "checkerboard",
    LMBDAS,
    anchor.seeds,
    IMAGES,
    {**anchor.values, "bpp": anchor.values["bpp"] * RATE_FACTOR},
  )
  result = uncertainty.bd_interval(test, anchor, resamples=300)
  truth = (RATE_FACTOR - 1) * 100
  assert result["bd_rate"] == pytest.approx(truth)
  assert result["bd_rate_low"] <= truth <= result["bd_rate_high"]
  assert result["bd_quality_high"] < 0  # more rate for the same quality: lower quality at a rate
  assert (result["seeds_test"], result["seeds_anchor"], result["images"]) == (2, 2, 12)
  width = result["bd_rate_high"] - result["bd_rate_low"]
  if noise:  # seeds resampled independently per model: their noise widens the interval
    assert width > 0.5
  else:
    assert width < 1e-6  # no seed noise and a constant factor: every draw gives +10%


def test_seed_noise_widens_the_interval_of_independent_models():
  anchor = synthetic_curve("charm", noise=0.03, seed=1)
  test = synthetic_curve("checkerboard", rate_factor=RATE_FACTOR, noise=0.03, seed=2)
  quiet = synthetic_curve("checkerboard", rate_factor=RATE_FACTOR, noise=0.0, seed=2)
  noisy = uncertainty.bd_interval(test, anchor, resamples=300)
  assert noisy["bd_rate_high"] - noisy["bd_rate_low"] > 1.0
  assert uncertainty.bd_interval(quiet, synthetic_curve("charm", noise=0.0), resamples=300)[
    "bd_rate"
  ] == pytest.approx((RATE_FACTOR - 1) * 100)


def test_the_interval_is_seeded_and_one_seed_resamples_images_only():
  anchor = synthetic_curve("charm", seeds=(0,), noise=0.05)
  test = synthetic_curve("checkerboard", rate_factor=1.2, seeds=(0,), noise=0.05, seed=3)
  first = uncertainty.bd_interval(test, anchor, resamples=100, seed=7)
  again = uncertainty.bd_interval(test, anchor, resamples=100, seed=7)
  assert first == again
  assert first["resampled"] == "images"


def test_seed_noise_table_compares_each_seed_with_the_first():
  samples = {"charm": synthetic_curve("charm", noise=0.05, seed=4)}
  table = uncertainty.seed_noise_table(samples)
  assert list(table["curve"]) == ["charm"] and list(table["seed"]) == [1]
  rates = samples["charm"].values["bpp"].mean(axis=2)
  # each seed's rate is a constant factor of the other's: BD-rate is that factor
  expected = (rates[0, 1] / rates[0, 0] - 1) * 100
  assert table["bd_rate_pchip_pct"].iloc[0] == pytest.approx(expected, rel=1e-6)


def per_run_table():
  rows = []
  for seed, (bpp, psnr, ms_ssim) in enumerate([(0.30, 30.0, 0.95), (0.34, 30.4, 0.97)]):
    rows.append(
      {
        "curve": "charm",
        "curve_id": "charm",
        "entropy": "charm",
        "source": "cbexp",
        "run_id": f"run{seed}",
        "lmbda": 0.01,
        "bpp": bpp,
        "psnr": psnr,
        "ms_ssim": ms_ssim,
        "ms_ssim_db": ms_ssim_db(ms_ssim),
        "encode_time_median": 0.1 * (seed + 1),
        "decode_time_median": 0.2,
        "encode_time_mean": 0.1,
        "decode_time_mean": 0.2,
        "num_images": 12,
        "seed": str(seed),
        "seeds": 1,
      }
    )
  return pd.DataFrame(rows)


def test_runs_that_differ_only_in_seed_become_one_point_with_its_spread():
  per_run = per_run_table()
  runs = pd.DataFrame(
    {
      "run_id": ["run0", "run1"],
      "params.trainer.seed": ["0", "1"],
      "params.trainer.steps": ["10", "10"],
    }
  )
  points, notes = uncertainty.average_seeds(per_run, runs)
  assert notes == [] and len(points) == 1
  point = points.iloc[0]
  assert (point["bpp"], point["psnr"], point["ms_ssim"]) == pytest.approx((0.32, 30.2, 0.96))
  assert point["ms_ssim_db"] == pytest.approx(ms_ssim_db(0.96))  # dB of the mean MS-SSIM
  assert point["psnr_sd"] == pytest.approx(np.std([30.0, 30.4], ddof=1))
  assert point["seeds"] == 2 and point["seed"] == "0,1" and point["run_id"] == "run0,run1"


def test_runs_that_differ_in_more_than_the_seed_are_flagged():
  per_run = per_run_table()
  runs = pd.DataFrame(
    {
      "run_id": ["run0", "run1"],
      "params.trainer.seed": ["0", "1"],
      "params.trainer.steps": ["10", "20"],
    }
  )
  _, notes = uncertainty.average_seeds(per_run, runs)
  assert len(notes) == 1 and "differ in more than the seed (trainer.steps)" in notes[0]
  per_run["seed"] = "0"
  _, notes = uncertainty.average_seeds(per_run, runs.assign(**{"params.trainer.steps": "10"}))
  assert len(notes) == 1 and "a seed is repeated" in notes[0]


def test_curve_samples_need_one_run_per_lambda_and_seed_over_the_same_images():
  per_run = per_run_table()
  table = pd.DataFrame(
    {
      "image": IMAGES[:3],
      "bpp": [0.1, 0.2, 0.3],
      "psnr": [30, 31, 32],
      "ms_ssim": [0.9, 0.91, 0.92],
    }
  )
  samples = uncertainty.curve_samples(per_run, {"run0": table, "run1": table})
  assert samples["charm"].values["bpp"].shape == (1, 2, 3)
  other_images = table.assign(image=IMAGES[3:6])
  assert uncertainty.curve_samples(per_run, {"run0": table, "run1": other_images}) == {}
  assert uncertainty.curve_samples(per_run, {"run0": table}) == {}
