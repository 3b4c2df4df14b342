"""Shared fixtures. Kodak comes from $CBEXP_KODAK_DIR (.ci/run sets it); models are cached per
session because the paper configuration takes seconds to build."""

import os
import pathlib

import pytest

from cbexp.config import build_model, compose

# The test files that take longest (minutes each in CI, on 2 cores) run first; the others follow
# in their usual order. With `-n 2` each worker takes whole files in this order (pyproject.toml:
# --dist=loadfile), so that no long file starts last while the other worker has nothing to do.
LONGEST_FIRST = [
  "test_analysis_sweep.py",
  "test_laptop_study.py",
  "test_run_faults.py",
  "test_repeatable.py",
  "test_run_multiworker.py",
  "test_run.py",
  "test_run_bad_config.py",
  "test_codec_cli.py",
]


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


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
  from cbexp.images import load_image

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
