"""Fixtures of the codec tests."""

import numpy as np
import pytest
import tensorflow as tf

from cbexp.codec import bitstream
from cbexp.codec.codec import Codec
from cbexp.codec.model_dir import save_model_dir
from cbexp.config import build_model, compose
from helpers.models import tiny_overrides


@pytest.fixture(scope="module")
def tiny_files(model_factory, tmp_path_factory):
  """A tiny model directory, a .cbx file it wrote, and a model directory with other weights."""
  folder = tmp_path_factory.mktemp("tiny")
  overrides = tiny_overrides("checkerboard")
  cfg = compose(overrides)
  model = model_factory(overrides)
  save_model_dir(model, cfg, folder / "model")
  tiny_codec = Codec.from_model(model, cfg)
  image = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  stream = tiny_codec.encode(image)
  bitstream.write(folder / "good.cbx", stream)
  tf.random.set_seed(1)
  other = build_model(cfg)
  save_model_dir(other, cfg, folder / "other_model")
  return folder, stream
