"""Everything about a training config that can be checked before training: ``validate(cfg)`` ->
a ``RunPlan`` (the image files, the run directory, the tracking store), or a ``ConfigError`` (or
another one-line ``CbexpError``) naming the first problem. Nothing here loads TensorFlow until
the last check, which imports the entropy model.
"""

import dataclasses
import importlib.util
import json
import math
import os
import pathlib

import hydra
from omegaconf import OmegaConf

from cbexp import images
from cbexp.config import (
  CONF_DIR,
  STRATEGIES,
  ConfigError,
  entropy_defaults,
  entropy_names,
  group_options,
)
from cbexp.constants import TRAINING_PRECISIONS
from cbexp.models.transforms import WIDTH_KEYS
from cbexp.tracking import runs, store
from cbexp.training import data, schedules

# What a job returns to a Hydra sweeper (eval.objective): the rate-distortion loss of the final
# evaluation (real bpp + lmbda * MSE) or one of cbexp.evaluation.evaluate's summary values.
OBJECTIVES = ("rd_loss", "bpp", "psnr", "ms_ssim", "ms_ssim_db")
# Config options whose Hydra plugin is an optional extra: (group, option) -> (module, extra).
PLUGIN_EXTRAS = {("hydra/sweeper", "lr_search"): ("hydra_plugins.hydra_optuna_sweeper", "optuna")}
# Settings that make a run's checkpoints what they are: a run directory resumes only these.
RESUME_KEYS = ("transform", "entropy", "lmbda")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What validation found: the training, validation and evaluation images (no training or
  validation files for a tfds dataset), the run directory and the tracking URI."""

  run_dir: pathlib.Path
  uri: str
  eval_paths: list
  train_paths: list = dataclasses.field(default_factory=list)
  val_paths: list = dataclasses.field(default_factory=list)


def check_group_overrides(arguments):
  """Unknown options of a config group (``entropy=foo``) as one line, before Hydra's own
  multi-line message. Returns None when all are known."""
  groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
  for argument in arguments:
    if argument.startswith("-") or "=" not in argument:
      continue
    key, value = argument.split("=", 1)
    key = key.lstrip("+~").split("@")[0]
    plugin = PLUGIN_EXTRAS.get((key, value))
    if plugin and importlib.util.find_spec(plugin[0]) is None:
      return f'{key}={value} needs an optional extra: pip install -e ".[{plugin[1]}]"'
    if key not in groups or "(" in value:  # choice(...)/range(...) sweeps: left to Hydra
      continue
    known = group_options(key)
    for option in value.split(","):
      if option and option != "null" and option not in known:
        what = "entropy model" if key == "entropy" else f"{key} option"
        return f"unknown {what} '{option}' (known: {', '.join(known)})"
  return None


def validate(cfg):
  """-> the RunPlan of ``cfg``. Raises a one-line error on the first problem, in this order:
  the settings, the images, the run directory, the tracking store, the model's code."""
  check_settings(cfg)
  train_paths, val_paths = training_images(cfg.dataset, cfg.trainer.patch_size)
  if cfg.trainer.get("rd_every") and not val_paths:
    raise ConfigError(
      f"trainer.rd_every={cfg.trainer.rd_every}: RD points during training code the "
      f"validation image files, and dataset {cfg.dataset.name} has none (a folder or skimage "
      f"dataset with dataset.val_images >= 1 has)"
    )
  eval_paths = evaluation_images(cfg.eval)
  run_dir = run_directory(cfg)
  check_run_dir(run_dir)
  uri = store.resolve_uri(cfg.tracking.uri)
  store.check_uri(uri)
  try:  # last: importing a model imports TensorFlow (seconds)
    hydra.utils.get_class(cfg.entropy._target_)
  except Exception as error:
    raise ConfigError(f"entropy._target_ {cfg.entropy._target_}: cannot import ({error})") from None
  check_same_model(cfg, run_dir)
  return RunPlan(run_dir, uri, eval_paths, train_paths, val_paths)


def check_settings(cfg):
  """The settings alone: entropy model, numbers, trainer, cluster, schedule, objective."""
  known_entropy = entropy_names()
  if cfg.entropy.name not in known_entropy:
    raise ConfigError(
      f"entropy.name: unknown entropy model '{cfg.entropy.name}' "
      f"(known: {', '.join(known_entropy)})"
    )
  check_numbers(cfg)
  check_trainer(cfg.trainer)
  schedules.check(
    cfg.schedule.boundaries, [cfg.schedule.get("scale", 1.0) * r for r in cfg.schedule.rates]
  )
  objective = cfg.eval.get("objective")
  if objective and objective not in OBJECTIVES:
    raise ConfigError(f"eval.objective: unknown objective '{objective}' ({', '.join(OBJECTIVES)})")


def check_numbers(cfg):
  """Types and ranges of the numeric settings, before anything is built (``lmbda=abc`` or
  ``trainer.steps=0`` must not reach TensorFlow)."""

  def number(key, value, integer=False, positive=True, optional=False):
    if optional and value is None:
      return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
      raise ConfigError(f"{key}={value!r}: must be {'an integer' if integer else 'a number'}")
    if positive and value <= 0:
      raise ConfigError(f"{key}={value!r}: must be positive")

  number("lmbda", cfg.lmbda)
  number("memory_budget_mb", cfg.get("memory_budget_mb"), positive=False, optional=True)
  if (cfg.get("memory_budget_mb") or 0) < 0:
    raise ConfigError(f"memory_budget_mb={cfg.memory_budget_mb}: must be 0 (untiled) or more")
  for key in (
    "steps",
    "batch_size",
    "patch_size",
    "log_every",
    "val_every",
    "checkpoint_every",
    "max_checkpoints",
  ):
    number(f"trainer.{key}", cfg.trainer[key], integer=True)
  number("trainer.seed", cfg.trainer.seed, integer=True, positive=False)
  if cfg.trainer.seed < 0:
    raise ConfigError(f"trainer.seed={cfg.trainer.seed}: must be 0 or more")
  number("trainer.threads", cfg.trainer.get("threads"), integer=True, optional=True)
  number("trainer.rd_every", cfg.trainer.get("rd_every"), integer=True, optional=True)
  number("trainer.collective_timeout_s", cfg.trainer.get("collective_timeout_s"), optional=True)
  for key, value in cfg.transform.items():
    if key not in WIDTH_KEYS:  # the backbone's name and options: checked when it is built
      continue
    values = list(value) if OmegaConf.is_list(value) else [value]
    for item in values:
      number(f"transform.{key}", item, integer=True)


def check_trainer(trainer):
  """The patch size, the strategy and the cluster the process is part of (TF_CONFIG, Slurm)."""
  if trainer.patch_size < 64 or trainer.patch_size % 64:
    raise ConfigError(
      f"trainer.patch_size {trainer.patch_size}: must be a multiple of 64 "
      f"(the transforms downsample by 64 in all)"
    )
  if trainer.strategy not in STRATEGIES:
    raise ConfigError(
      f"trainer.strategy: unknown strategy '{trainer.strategy}' ({', '.join(STRATEGIES)})"
    )
  precision = trainer.get("precision", "float32")
  if precision not in TRAINING_PRECISIONS:
    raise ConfigError(
      f"trainer.precision: unknown precision '{precision}' ({', '.join(TRAINING_PRECISIONS)})"
    )
  if trainer.strategy == "multi_worker" and os.environ.get("TF_CONFIG"):
    try:
      tf_config = json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as error:
      raise ConfigError(f"TF_CONFIG: not valid JSON ({error})") from None
    if (
      not isinstance(tf_config, dict)
      or not isinstance(tf_config.get("cluster"), dict)
      or not isinstance(tf_config.get("task"), dict)
    ):
      raise ConfigError(
        'TF_CONFIG: needs {"cluster": {"worker": ["host:port", ...]}, '
        '"task": {"type": "worker", "index": i}}'
      )
  slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
  if slurm_tasks > 1 and trainer.strategy != "multi_worker" and not os.environ.get("TF_CONFIG"):
    # Every task would train its own copy of the run into the same run directory.
    raise ConfigError(
      f"this Slurm job step has {slurm_tasks} tasks: one run on several tasks "
      f"needs trainer.strategy=multi_worker (hydra/launcher=slurm_multi), "
      f"separate runs one task each (hydra/launcher=slurm)"
    )
  for key in ("log_every", "val_every", "checkpoint_every"):
    if trainer[key] < 1:
      raise ConfigError(f"trainer.{key} must be positive")


def training_images(dataset, patch_size):
  """-> (training, validation) image files of a folder dataset, checked against the patch size;
  ([], []) for a tfds dataset, whose package must be installed."""
  if dataset.source == "tfds":
    try:
      import tensorflow_datasets  # noqa: F401  (CLIC is downloaded on first use)
    except ImportError as error:
      raise ConfigError(f"dataset {dataset.name}: tensorflow-datasets missing ({error})") from None
    return [], []
  paths = images.config_image_paths(dataset.source, dataset.path, "dataset", dataset.get("files"))
  train_paths, val_paths = data.split_train_val(paths, dataset.val_images)
  images.check_images(paths, patch_size)
  return train_paths, val_paths


def evaluation_images(evaluation):
  """-> the evaluation image files, each one readable: a bad one must not wait for the end of
  training."""
  paths = images.config_image_paths(
    evaluation.source, evaluation.path, "eval", evaluation.get("files")
  )
  if evaluation.max_images:
    paths = paths[: evaluation.max_images]
  images.check_images(paths)
  return paths


def run_directory(cfg):
  if cfg.run_dir:
    return pathlib.Path(cfg.run_dir).expanduser().absolute()
  from hydra.core.hydra_config import HydraConfig

  if HydraConfig.initialized():
    return pathlib.Path(HydraConfig.get().runtime.output_dir).absolute()
  raise ConfigError("run_dir is not set (and no Hydra output directory: not under @hydra.main)")


def check_run_dir(run_dir):
  """A run directory that exists as a file, or cannot be created or written, stops the run now."""
  if run_dir.exists() and not run_dir.is_dir():
    raise ConfigError(f"run_dir {run_dir}: exists and is not a folder")
  existing = next(p for p in [run_dir, *run_dir.parents] if p.exists())
  if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"run_dir {run_dir}: {existing} is not a writable folder")


def check_same_model(cfg, run_dir):
  """Refuses to resume a run directory whose saved config.yaml describes another model."""
  saved_path = run_dir / "config.yaml"
  if not saved_path.is_file():
    return
  try:
    saved = OmegaConf.load(saved_path)
  except Exception as error:
    raise ConfigError(
      f"{saved_path}: unreadable ({error.__class__.__name__}); restore it or use another run_dir"
    ) from None
  now = OmegaConf.to_container(cfg, resolve=True)
  before = OmegaConf.to_container(saved, resolve=True)
  # A key the saved config lacks (added to cbexp after the run started) means the entropy
  # class's default, which is what that run was built with.
  defaults = entropy_defaults((before.get("entropy") or {}).get("_target_", ""))
  old_values = runs.flatten({k: before.get(k) for k in RESUME_KEYS})
  for key, value in runs.flatten({k: now.get(k) for k in RESUME_KEYS}).items():
    old = old_values.get(
      key, defaults.get(key.partition("entropy.")[2]) if key.startswith("entropy.") else None
    )
    if isinstance(old, tuple):
      old = list(old)
    if old != value:
      raise ConfigError(
        f"run_dir {run_dir} holds a run with {key}={old}, not {value}: use "
        f"another run_dir, or the settings it was started with"
      )
