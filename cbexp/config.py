"""Configs: composing ``cbexp/conf`` (Hydra), the options of its groups, and building a model.

A model config is data: ``build_model`` checks it (``model_config``: the entropy ``_target_`` is
one of cbexp's own classes, every other value a plain scalar or list) and calls that class itself,
never ``hydra.utils.instantiate``; configs from outside pass ``check_untrusted_config`` first.
"""

import functools
import hashlib
import importlib
import os
import pathlib
import re

from omegaconf import DictConfig, OmegaConf

from cbexp.errors import CbexpError
from cbexp.models.transforms import check_transform_config

# The configs ship inside the package (a regular install, a wheel, runs them); the repository's
# top-level conf/ is a link to this folder, the place a reader looks and edits.
CONF_DIR = pathlib.Path(__file__).resolve().parent / "conf"
# Config keys that define the network (what an export fingerprints, build_model reads).
MODEL_KEYS = ("transform", "entropy", "scale_table", "lmbda")
# The values of trainer.strategy (the tf.distribute strategies of cbexp.training.distributed),
# here so that a config is checked before TensorFlow loads.
STRATEGIES = ("default", "mirrored", "multi_worker")
_SCALARS = (bool, int, float, str)


class ConfigError(CbexpError, ValueError):
  """A config value that is refused; the message names the key."""


def compose(overrides=(), config_name="config"):
  """Composes ``conf/<config_name>.yaml`` with Hydra overrides, outside of ``@hydra.main``."""
  from hydra import compose as hydra_compose
  from hydra import initialize_config_dir

  with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    return hydra_compose(config_name=config_name, overrides=list(overrides))


def expand_sweeps(overrides):
  """Hydra overrides in which ``key=a,b`` sweeps a key (as ``cbexp train -m`` does) -> one list
  of plain overrides per combination, in order, each with its label: ``+a`` for every swept key
  but the entropy group (a model is named by its entropy model first). [(label, overrides)]."""
  import itertools

  from hydra.core.override_parser.overrides_parser import OverridesParser

  overrides = list(overrides)
  choices = []
  for token, override in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
    if not override.is_sweep_override():
      choices.append([("", token)])
      continue
    key = override.get_key_element()
    label = "" if key == "entropy" else "+{}"
    choices.append([(label.format(v), f"{key}={v}") for v in override.sweep_string_iterator()])
  return [
    ("".join(label for label, _ in combination), [o for _, o in combination])
    for combination in itertools.product(*choices)
  ]


def run_name(override_dirname):
  """A directory name for a run from its command-line overrides (``hydra.job.override_dirname``):
  identical commands give identical names, hence the same run directory (resume)."""
  if not override_dirname:
    return "default"
  name = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", override_dirname).strip("_")
  if len(name) > 100:
    name = name[:80] + "_" + hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
  return name


SWEEP_NAME_VARIABLE = "CBEXP_SWEEP_NAME"


def sweep_name(overrides):
  """A directory name for a sweep from the overrides of its command (``hydra.overrides.task`` of
  the launching process, sweeps included: ``lmbda=0.005,0.02``), so that the same ``-m`` command
  resumes the same sweep. A job's own overrides are one combination: its process finds the
  sweep's name in $CBEXP_SWEEP_NAME, which the launching process sets for its jobs
  (cbexp.tracking.sweeps.SweepCallback)."""
  return os.environ.get(SWEEP_NAME_VARIABLE) or run_name(",".join(sorted(overrides)))


# conf/config.yaml names its run directories with it (hydra.run.dir, hydra.sweep.subdir).
OmegaConf.register_new_resolver("cbexp.run_name", run_name, replace=True)
OmegaConf.register_new_resolver("cbexp.sweep_name", sweep_name, replace=True)


def group_options(group):
  """The options of a config group (``conf/<group>/*.yaml``), sorted."""
  return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def entropy_names():
  """The entropy models a config may select (``entropy=<name>``): conf/entropy/*.yaml."""
  return group_options("entropy")


@functools.lru_cache(maxsize=None)
def entropy_classes():
  """The entropy-model classes a config may name: the ``_target_`` of every
  ``conf/entropy/*.yaml`` (adding an entropy model stays: one module + one yaml file). Should
  that folder hold none, the EntropyModel subclasses that cbexp.entropy's own modules define."""
  targets = set()
  for name in entropy_names():
    target = OmegaConf.load(CONF_DIR / "entropy" / f"{name}.yaml").get("_target_")
    if isinstance(target, str) and target.startswith("cbexp.entropy."):
      targets.add(target)
  if not targets:
    import inspect
    import pkgutil

    import cbexp.entropy
    from cbexp.entropy.base import EntropyModel

    for info in pkgutil.iter_modules(cbexp.entropy.__path__, "cbexp.entropy."):
      module = importlib.import_module(info.name)
      targets.update(
        f"{info.name}.{name}"
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, EntropyModel)
        and value is not EntropyModel
        and value.__module__ == info.name
      )
  return frozenset(targets)


def _check_plain(value, key):
  """A scalar or a list of scalars (no mappings, no interpolations)."""
  items = value if isinstance(value, list) else [value]
  for item in items:
    if item is not None and not isinstance(item, _SCALARS):
      kind = "a mapping" if isinstance(item, dict) else f"a {type(item).__name__}"
      raise ConfigError(
        f"{key}: {kind} is not allowed here; a model config holds only scalars and lists of scalars"
      )
    if isinstance(item, str) and "${" in item:
      raise ConfigError(f"{key}: interpolation {item!r} is not allowed in a model config")


def model_config(cfg, resolve=True):
  """The validated model part of a config -> plain dict {transform, entropy, scale_table,
  lmbda}. Raises ConfigError naming the first offending key."""
  if isinstance(cfg, DictConfig):
    missing = [k for k in MODEL_KEYS if k not in cfg]
    if missing:
      raise ConfigError(f"missing keys {missing}")
    cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, list(MODEL_KEYS)), resolve=resolve)
  missing = [k for k in MODEL_KEYS if k not in cfg]
  if missing:
    raise ConfigError(f"missing keys {missing}")
  model = {}
  for section in ("transform", "entropy", "scale_table"):
    values = cfg[section]
    if not isinstance(values, dict):
      raise ConfigError(f"{section}: expected a mapping of plain values")
    for key, value in values.items():
      name = f"{section}.{key}"
      if not isinstance(key, str):
        raise ConfigError(f"{name}: keys must be names")
      if key.startswith("_") and name != "entropy._target_":
        raise ConfigError(
          f"{name}: not allowed in a model config (only entropy._target_, "
          "naming one of cbexp's entropy models)"
        )
      _check_plain(value, name)
    model[section] = dict(values)
  try:
    check_transform_config(model["transform"])
  except ValueError as e:
    raise ConfigError(str(e)) from None
  target = model["entropy"].get("_target_")
  if target not in entropy_classes():
    raise ConfigError(
      f"entropy._target_: {target!r} is not one of cbexp's entropy models "
      f"({', '.join(sorted(entropy_classes()))})"
    )
  lmbda = cfg["lmbda"]
  if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)):
    raise ConfigError(f"lmbda: expected a number, got {lmbda!r}")
  model["lmbda"] = lmbda
  return model


def check_untrusted_config(container):
  """A config from outside (a model directory's config.yaml, as a plain container, unresolved):
  its model keys must pass ``model_config`` without interpolations, and no ``_target_`` may
  appear anywhere else (nothing in it is ever instantiated, but a config that names code is
  refused rather than carried along)."""
  if not isinstance(container, dict):
    raise ConfigError("expected a mapping at the top level")
  model_config(container)

  def walk(node, where):
    if isinstance(node, dict):
      for key, value in node.items():
        name = f"{where}.{key}" if where else str(key)
        if key == "_target_" and name != "entropy._target_":
          raise ConfigError(f"{name}: a config that names code ({value!r}) is not allowed")
        walk(value, name)
    elif isinstance(node, list):
      for i, value in enumerate(node):
        walk(value, f"{where}[{i}]")

  walk(container, "")


def entropy_defaults(target):
  """{argument: default} of the entropy class ``target`` (one of ``entropy_classes()``): what a
  key missing from a saved config means (a model saved before the key existed was built with
  the class's default)."""
  import inspect

  if target not in entropy_classes():
    return {}
  module_name, class_name = target.rsplit(".", 1)
  entropy_class = getattr(importlib.import_module(module_name), class_name)
  return {
    name: p.default
    for name, p in inspect.signature(entropy_class).parameters.items()
    if p.default is not inspect.Parameter.empty
  }


def memory_budget_mb(cfg):
  """The codec's memory budget of a run config (``memory_budget_mb``; null or absent: cbexp's
  default, ``constants.DEFAULT_MEMORY_BUDGET_MB``)."""
  from cbexp.constants import DEFAULT_MEMORY_BUDGET_MB

  budget = cfg.get("memory_budget_mb")
  return DEFAULT_MEMORY_BUDGET_MB if budget is None else float(budget)


def build_model(cfg: DictConfig, precision="float32"):
  """transform + entropy + scale_table + lmbda -> CompressionModel (untrained). The config is
  validated first (``model_config``); the entropy class is one of cbexp's own. ``precision``: the
  training precision of the transforms (``cbexp.models.precision.training_policy``; training
  passes ``trainer.precision``); a model that codes is built in float32."""
  from cbexp.models.compression import CompressionModel
  from cbexp.models.precision import training_policy
  from cbexp.models.transforms import build_backbone

  model = model_config(cfg)
  t = model["transform"]
  entropy = dict(model["entropy"])
  module_name, class_name = entropy.pop("_target_").rsplit(".", 1)
  entropy_class = getattr(importlib.import_module(module_name), class_name)
  entropy_model = entropy_class(
    latent_depth=t["latent_depth"],
    hyper_synthesis_filters=list(t["hyper_synthesis_filters"]),
    scale_table=dict(model["scale_table"]),
    **entropy,
  )
  try:
    with training_policy(precision):
      analysis, synthesis = build_backbone(t)
  except ValueError as error:  # an option the backbone does not have, or a precision
    raise ConfigError(str(error)) from None
  return CompressionModel(
    analysis=analysis,
    synthesis=synthesis,
    latent_depth=t["latent_depth"],
    hyperprior_depth=t["hyperprior_depth"],
    hyper_analysis_filters=list(t["hyper_analysis_filters"]),
    entropy_model=entropy_model,
    lmbda=model["lmbda"],
    precision=precision,
  )
