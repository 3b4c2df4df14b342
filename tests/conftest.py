"""Shared fixtures. Kodak comes from $CBEXP_KODAK_DIR (.ci/run sets it); models are cached per
session because the paper configuration takes seconds to build."""
import os
import pathlib

import pytest

from cbexp.config import CONF_DIR, build_model, compose

ENTROPY_MODELS = sorted(p.stem for p in (CONF_DIR / "entropy").glob("*.yaml"))
PAPER_ENTROPY_MODELS = ["hyperprior", "charm", "checkerboard"]


def tiny_overrides(entropy, *extra):
  return ["transform=tiny", f"entropy={entropy}", "entropy.hidden_filters=[16,16]", *extra]


def assert_round_trip(model, image):
  """Compresses and decompresses ``image`` (uint8 [H, W, 3]); checks the decoded image's shape and
  dtype, that the decoder reproduces the encoder's quantized latents exactly (every element), and
  the number of strings. Returns the ``Compressed``."""
  import numpy as np
  import tensorflow as tf
  compressed = model.compress(image)
  decoded, y_hat = model.decompress(compressed, return_latent=True)
  assert decoded.shape == image.shape and decoded.dtype == tf.uint8
  np.testing.assert_array_equal(y_hat.numpy(), compressed.y_hat.numpy())
  assert len(compressed.strings) == 1 + model.entropy_model.num_strings
  return compressed


@pytest.fixture(scope="session")
def kodak_dir():
  folder = os.environ.get("CBEXP_KODAK_DIR")
  if not folder or not pathlib.Path(folder).is_dir():
    if os.environ.get("CI"):
      pytest.fail("CBEXP_KODAK_DIR must name the Kodak folder in CI")
    pytest.skip("set CBEXP_KODAK_DIR to the Kodak folder to run this test")
  return pathlib.Path(folder)


@pytest.fixture(scope="session")
def kodak_image(kodak_dir):
  from cbexp.data import load_image
  return load_image(kodak_dir / "kodim01.png")  # 768x512 (landscape)


_models = {}


@pytest.fixture(scope="session")
def model_factory():
  """model_factory(overrides) -> model with coders built, cached by overrides."""

  def make(overrides):
    key = tuple(overrides)
    if key not in _models:
      import tensorflow as tf
      tf.random.set_seed(0)
      model = build_model(compose(list(overrides)))
      model.build_coders()
      _models[key] = model
    return _models[key]

  return make
