"""An entropy model defined only here, outside cbexp, gets everything the measurements need from
the ``EntropyModel`` interface: a bit-exact round trip, the benchmark's stages, MAC counts and the
conformance records. Nothing else in cbexp is touched (the model is built directly, not through a
config, so the allow-list of entropy classes stays as it is)."""

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from cbexp.entropy.base import EntropyModel, LatentOutput
from cbexp.entropy.layers import dense_macs
from cbexp.evaluation import bench, complexity, conformance
from cbexp.models.compression import CompressionModel
from cbexp.models.transforms import ms2020
from cbexp.models.transforms.layers import HyperSynthesisTransform, transform_macs
from helpers.models import assert_round_trip
from helpers.runs import smooth_image

LATENT, HYPER = 40, 16  # the tiny transform's depths


class PlainHyperprior(EntropyModel):
  """Mean and scale index from the hyper features by one 1x1 layer; no context, no LRP."""

  def __init__(self, latent_depth, hyper_synthesis_filters, scale_table, name="plain"):
    super().__init__(latent_depth, scale_table, name=name)
    self.hyper_synthesis = HyperSynthesisTransform(hyper_synthesis_filters, latent_depth)
    self.parameters = tf.keras.layers.Dense(2 * latent_depth, name="parameters")

  def parameter_groups(self):
    return {"hyper_synthesis": [self.hyper_synthesis], "entropy_parameters": [self.parameters]}

  def _mean_and_index(self, hyper):
    return tf.split(self.parameters(hyper), 2, axis=-1)

  def call(self, y, z_hat, training):
    mean, scale_index = self._mean_and_index(self.hyper_synthesis(z_hat))
    return LatentOutput(
      y_hat=self.gaussian.quantize(y, mean), bits=self.gaussian.rate(y, scale_index, mean, training)
    )

  def compress(self, y, z_hat):
    mean, scale_index = self._mean_and_index(self.hyper_synthesis(z_hat))
    return [self.gaussian.compress(y, scale_index, mean)], tf.round(y - mean) + mean

  def decode_stages(self, strings, z_hat, y_shape, stage):
    hyper = stage("hyper_synthesis", self.hyper_synthesis, z_hat)
    mean, scale_index = stage("entropy_parameters", self._mean_and_index, hyper)
    return stage("range_coding", self.gaussian.decompress, strings[0], scale_index, mean)

  def decode_macs(self, latent_hw, z_hw):
    return {
      "hyper_synthesis": transform_macs(self.hyper_synthesis, *z_hw),
      "entropy_parameters": dense_macs(self.parameters, latent_hw[0] * latent_hw[1]),
    }


@pytest.fixture(scope="module")
def model():
  tf.keras.utils.set_random_seed(3)
  entropy_model = PlainHyperprior(
    LATENT, [16, 24], dict(num_scales=64, scale_min=0.11, scale_max=256.0)
  )
  model = CompressionModel(
    analysis=ms2020.AnalysisTransform(16, LATENT),
    synthesis=ms2020.SynthesisTransform(16, LATENT),
    latent_depth=LATENT,
    hyperprior_depth=HYPER,
    hyper_analysis_filters=[32, 24],
    entropy_model=entropy_model,
  )
  # Biases spread the means and scale indexes over the table, as in a trained model.
  rng = np.random.default_rng(0)
  for variable in entropy_model.trainable_variables:
    if "bias" in variable.name:
      variable.assign(rng.normal(0.0, 3.0, variable.shape).astype(np.float32))
  model.build_coders()
  return model


@pytest.fixture(scope="module")
def image():
  return smooth_image(64, 128, seed=1)


def test_round_trip_is_bit_exact(model, image):
  compressed = assert_round_trip(model, image)
  assert len(compressed.checks) == 2  # z and the one y string, each with its symbol check
  np.testing.assert_array_equal(
    model.decompress(compressed).numpy(), model.decompress(model.compress(image)).numpy()
  )


def test_bench_times_its_stages_and_counts_its_macs(model, image):
  stages = bench.StagedDecoder(model)
  compressed = model.compress(image)
  _, y_hat, times = stages.run(compressed.strings, compressed.image_shape)
  np.testing.assert_array_equal(y_hat.numpy(), compressed.y_hat.numpy())
  assert {stage for stage, seconds in times.items() if seconds > 0} == {
    "range_coding",
    "hyper_synthesis",
    "entropy_parameters",
    "synthesis",
  }

  class Progress:
    def update(self, n):
      pass

  subject = bench.Subject(
    "plain", model, OmegaConf.create({"entropy": {"name": "plain"}}), trained=False
  )
  rows = bench.bench_model(subject, [("image", tf.constant(image))], ["float32"], 1, Progress())
  assert rows[0]["stage_entropy_parameters_s"] > 0 and rows[0]["stage_lrp_s"] == 0
  assert rows[0]["bpp"] > 0 and rows[0]["psnr"] > 0
  _, summary = bench.summarize(rows, [subject], {})
  assert summary.decode_kmac_per_pixel_entropy_parameters.iloc[0] > 0


def test_mac_counts_come_from_the_model(model):
  got = complexity.decode_kmac_per_pixel(model, height=64, width=128)
  hyper_synthesis = 2 * 25 * 16 * 16 + 8 * 25 * 16 * 24 + 32 * 9 * 24 * LATENT  # on 1x2 -> 4x8
  parameters = 32 * LATENT * 2 * LATENT  # the 1x1 layer at the 32 latent positions
  assert got["hyper_synthesis"] == pytest.approx(hyper_synthesis / (64 * 128) / 1e3)
  assert got["entropy_parameters"] == pytest.approx(parameters / (64 * 128) / 1e3)
  assert got["context"] == got["lrp"] == 0
  assert got["total"] == pytest.approx(sum(v for k, v in got.items() if k != "total"))


def test_conformance_records_and_a_broken_decoder(model, image):
  recorder = conformance.EntropyParameterRecorder(model)
  strings, encoder = recorder.record_encoder(tf.constant(image))
  assert strings == model.compress(image).strings
  assert len(encoder) == 1 and encoder[0]["indexes"].shape == (1, 4, 8, LATENT)
  assert np.unique(encoder[0]["indexes"]).size > 1  # the fixture's scale indexes spread
  decoder = recorder.teacher_forced(strings, image.shape[:2], encoder)
  counts = conformance.compare_records(encoder, decoder)
  assert counts["symbols"] == 32 * LATENT and counts["positions_mismatched"] == 0
  broken = conformance.EntropyParameterRecorder(model, index_offset=1.0)
  counts = conformance.compare_records(
    encoder, broken.teacher_forced(strings, image.shape[:2], encoder)
  )
  assert counts["index_mismatches"] > 0 and counts["symbol_mismatches"] == 0
