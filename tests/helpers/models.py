"""Model configs and checks shared by the test files."""

from cbexp.config import entropy_names

ENTROPY_MODELS = entropy_names()
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
