"""Saving and loading a trained model as *config + weights*.

A model directory holds ``config.yaml`` (the resolved config; ``build_model`` needs its
``transform``, ``entropy``, ``scale_table`` and ``lmbda``) and ``weights/`` (a TensorFlow
checkpoint of the model's variables). Runs log this directory to MLflow as the ``model``
artifact; ``cbexp.export`` turns it into a self-contained SavedModel.

Loading treats a model directory as data: ``config.yaml`` is read with a safe YAML loader (no
aliases, at most MAX_CONFIG_BYTES), checked against an allow-list
(``cbexp.config.check_untrusted_config``: the entropy ``_target_`` one of cbexp's own entropy
classes, no other ``_target_``, plain values only) before anything is built, and the weights are
a TensorFlow checkpoint (tensors, no code).
"""
import pathlib

import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cbexp.config import ConfigError, build_model, check_untrusted_config

MAX_CONFIG_BYTES = 1 << 20  # a saved config is a few KB


class ModelDirError(ValueError):
  pass


def save_model_dir(model, cfg: DictConfig, directory):
  directory = pathlib.Path(directory)
  (directory / "weights").mkdir(parents=True, exist_ok=True)
  OmegaConf.save(cfg, directory / "config.yaml", resolve=True)
  tf.train.Checkpoint(model=model).write(str(directory / "weights" / "model"))
  return directory


def load_model_dir(directory, build_coders=True, numerics=None):
  """-> (model, cfg). The range-coding tables are rebuilt from the restored weights.

  ``numerics`` ("float" or "exact", None: the config's): sets ``cfg.entropy.numerics`` before
  the model is built, e.g. to code with the exact entropy path of a model trained in float
  (``cbexp.entropy.exact``); it is part of the returned config, so of the fingerprint."""
  directory = pathlib.Path(directory)
  config_path = directory / "config.yaml"
  if not config_path.is_file():
    raise ModelDirError(f"{directory}: not a cbexp model directory (no config.yaml)")
  cfg = load_config(config_path)
  if numerics is not None:
    from cbexp.entropy.exact import NUMERICS
    if numerics not in NUMERICS:
      raise ModelDirError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    cfg.entropy.numerics = numerics
  model = build_model(cfg)
  prefix = directory / "weights" / "model"
  if not tf.io.gfile.exists(str(prefix) + ".index"):
    raise ModelDirError(f"{directory}: no weights (expected {prefix}.index)")
  tf.train.Checkpoint(model=model).read(str(prefix)).expect_partial()
  if build_coders:
    model.build_coders()
  return model, cfg


def load_config(config_path):
  """A model directory's config.yaml -> DictConfig, validated as untrusted data before anything
  is built from it. Raises ModelDirError naming the file and the offending key."""
  import yaml
  size = config_path.stat().st_size
  if size > MAX_CONFIG_BYTES:
    raise ModelDirError(f"{config_path}: {size} bytes, more than a model config can need "
                        f"({MAX_CONFIG_BYTES})")
  text = config_path.read_text(encoding="utf-8", errors="replace")
  try:
    # YAML aliases could expand a small file into a huge config (a saved config has none).
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, yaml.SafeLoader)):
      raise ModelDirError(f"{config_path}: YAML aliases are not allowed in a model config")
    cfg = OmegaConf.create(text)
  except (yaml.YAMLError, OmegaConfBaseException) as error:
    first = (str(error).strip().splitlines() or ["invalid YAML"])[0]
    raise ModelDirError(f"{config_path}: not a valid YAML config ({first})") from None
  if not isinstance(cfg, DictConfig):
    raise ModelDirError(f"{config_path}: expected a mapping at the top level")
  try:
    check_untrusted_config(OmegaConf.to_container(cfg, resolve=False))
  except ConfigError as error:
    raise ModelDirError(f"{config_path}: {error}") from None
  return cfg
