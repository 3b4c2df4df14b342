"""Saving and loading a trained model as *config + weights*.

A model directory holds ``config.yaml`` (the resolved config; ``build_model`` needs its
``transform``, ``entropy``, ``scale_table`` and ``lmbda``) and ``weights/`` (a TensorFlow
checkpoint of the model's variables). Runs log this directory to MLflow as the ``model``
artifact; ``cbexp.export`` turns it into a self-contained SavedModel.
"""
import pathlib

import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from cbexp.config import build_model

MODEL_KEYS = ("transform", "entropy", "scale_table", "lmbda")


class ModelDirError(ValueError):
  pass


def save_model_dir(model, cfg: DictConfig, directory):
  directory = pathlib.Path(directory)
  (directory / "weights").mkdir(parents=True, exist_ok=True)
  OmegaConf.save(cfg, directory / "config.yaml", resolve=True)
  tf.train.Checkpoint(model=model).write(str(directory / "weights" / "model"))
  return directory


def load_model_dir(directory, build_coders=True):
  """-> (model, cfg). The range-coding tables are rebuilt from the restored weights."""
  directory = pathlib.Path(directory)
  config_path = directory / "config.yaml"
  if not config_path.is_file():
    raise ModelDirError(f"{directory}: not a cbexp model directory (no config.yaml)")
  cfg = OmegaConf.load(config_path)
  missing = [k for k in MODEL_KEYS if k not in cfg]
  if missing:
    raise ModelDirError(f"{config_path}: missing keys {missing}")
  model = build_model(cfg)
  prefix = directory / "weights" / "model"
  if not tf.io.gfile.exists(str(prefix) + ".index"):
    raise ModelDirError(f"{directory}: no weights (expected {prefix}.index)")
  tf.train.Checkpoint(model=model).read(str(prefix)).expect_partial()
  if build_coders:
    model.build_coders()
  return model, cfg
