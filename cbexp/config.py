"""Config composition (Hydra) and building a model from a config.

The config root is the repository's ``conf/``; commands use ``@hydra.main`` on it and tests use
``compose``. ``build_model`` is the one place a config becomes a model.
"""
import pathlib

import hydra
from omegaconf import DictConfig, OmegaConf

CONF_DIR = pathlib.Path(__file__).resolve().parent.parent / "conf"


def compose(overrides=(), config_name="config"):
  """Composes ``conf/<config_name>.yaml`` with Hydra overrides, outside of ``@hydra.main``."""
  from hydra import compose as hydra_compose, initialize_config_dir
  with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    return hydra_compose(config_name=config_name, overrides=list(overrides))


def build_model(cfg: DictConfig):
  """transform + entropy + scale_table + lmbda -> CompressionModel (untrained)."""
  from cbexp.model import CompressionModel
  t = cfg.transform
  entropy_model = hydra.utils.instantiate(
      cfg.entropy, latent_depth=t.latent_depth,
      hyper_synthesis_filters=list(t.hyper_synthesis_filters),
      scale_table=OmegaConf.to_container(cfg.scale_table), _convert_="all")
  return CompressionModel(num_filters=t.num_filters, latent_depth=t.latent_depth,
                          hyperprior_depth=t.hyperprior_depth,
                          hyper_analysis_filters=list(t.hyper_analysis_filters),
                          entropy_model=entropy_model, lmbda=cfg.lmbda)
