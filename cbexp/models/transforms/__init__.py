"""The backbones: one module per transform (its analysis and synthesis written out), selected by
the config group ``transform`` (``conf/transform/<config>.yaml``, whose ``name`` is the module).

Every module defines ``AnalysisTransform(num_filters, latent_depth, **options)`` and
``SynthesisTransform(num_filters, latent_depth, **options)``; ``options`` are the module's own
config keys (cheng2020's ``attention``). The hyper transforms and the entropy models' networks
are ms2020's layer shapes for every backbone (``layers.py``), with widths from the transform's
config: the entropy model is what a study varies. Adding a backbone is one module here and one
config file.
"""

import importlib
import inspect

BACKBONES = ("ms2020", "mbt2018", "cheng2020", "elic")
# Keys every transform config has; any other key is an option of the backbone's classes.
COMMON_KEYS = (
  "name",
  "num_filters",
  "latent_depth",
  "hyperprior_depth",
  "hyper_analysis_filters",
  "hyper_synthesis_filters",
)
WIDTH_KEYS = COMMON_KEYS[1:]  # integers (or lists of them), whatever the backbone
DEFAULT_BACKBONE = "ms2020"  # what a saved model whose config names no backbone was built with


def backbone_module(name):
  """The module of backbone ``name`` (one of BACKBONES; ValueError otherwise)."""
  if name not in BACKBONES:
    raise ValueError(
      f"transform.name: {name!r} is not one of cbexp's backbones ({', '.join(BACKBONES)})"
    )
  return importlib.import_module(f"{__name__}.{name}")


def backbone_options(name):
  """{option: default} that backbone ``name``'s classes take besides the widths."""
  module = backbone_module(name)
  options = {}
  for cls in (module.AnalysisTransform, module.SynthesisTransform):
    for key, p in inspect.signature(cls).parameters.items():
      if key not in ("num_filters", "latent_depth"):
        options[key] = p.default
  return options


def check_transform_config(transform):
  """A transform config (a plain dict) -> its options for the backbone's classes; ValueError
  naming the first key that is not the backbone's."""
  name = transform.get("name", DEFAULT_BACKBONE)
  if name not in BACKBONES:
    backbone_module(name)  # raises, naming the backbones
  extra = [key for key in transform if key not in COMMON_KEYS]
  if not extra:  # no need to import the backbone (and TensorFlow) to check a plain config
    return {}
  allowed = backbone_options(name)
  for key in extra:
    if key not in allowed:
      known = ", ".join(sorted(allowed)) or "none"
      raise ValueError(
        f"transform.{key}: not an option of the {name} backbone (its options: {known})"
      )
    if type(transform[key]) is not type(allowed[key]):
      raise ValueError(
        f"transform.{key}: expected a {type(allowed[key]).__name__}, got {transform[key]!r}"
      )
  return {key: transform[key] for key in allowed if key in transform}


def build_backbone(transform):
  """A transform config (a plain dict) -> (analysis, synthesis), untrained."""
  name = transform.get("name", DEFAULT_BACKBONE)
  module = backbone_module(name)
  options = check_transform_config(transform)
  widths = dict(
    num_filters=int(transform["num_filters"]), latent_depth=int(transform["latent_depth"])
  )
  return module.AnalysisTransform(**widths, **options), module.SynthesisTransform(
    **widths, **options
  )
