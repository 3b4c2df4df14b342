"""Every config composes: each option of each group, each experiment preset (no TensorFlow); each
config group names existing code; every command answers --help both ways."""

import importlib
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cbexp.config import CONF_DIR, compose, run_name
from cbexp.tracking.runs import flatten
from cbexp.training.preflight import check_group_overrides
from cbexp.training.schedules import ScheduleError, check, first_steps

GROUPS = ("transform", "entropy", "schedule", "dataset", "trainer", "eval", "tracking")
RUN_KEYS = ("schedule", "dataset", "trainer", "eval", "tracking", "run_dir")


def options(group):
  return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_default_config_has_every_group():
  cfg = compose()
  for key in GROUPS + ("lmbda", "scale_table", "run_dir"):
    assert key in cfg, key
  assert cfg.dataset.name == "default" and cfg.eval.set == "default"  # offline by default
  assert cfg.schedule.boundaries == [0.9] and cfg.schedule.rates == [1e-4, 1e-5]
  assert cfg.trainer.steps == 2_000_000 and cfg.trainer.batch_size == 8
  assert cfg.trainer.patch_size == 256 and cfg.tracking.experiment == "cbexp"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option, monkeypatch, tmp_path):
  monkeypatch.setenv("CBEXP_KODAK_DIR", str(tmp_path))
  extra = (
    [f"{group}.path={tmp_path}"]
    if (group, option) in (("dataset", "folder"), ("eval", "folder"))
    else []
  )
  cfg = compose([f"{group}={option}"] + extra)
  # Resolving catches broken interpolations; a mandatory value left ??? would raise here.
  container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
  assert container[group]
  if group in ("entropy", "schedule", "dataset"):
    assert container[group]["name"] == option


# preset -> (backbone, entropy model, M), as published (docs/reference/backbones.md)
PAPER_MODELS = {
  "paper_charm": ("ms2020", "charm", 320),
  "paper_checkerboard": ("ms2020", "checkerboard", 320),
  "paper_hyperprior": ("ms2020", "hyperprior", 320),
  "paper_mbt2018": ("mbt2018", "autoregressive", 320),
  "paper_cheng2020_anchor": ("cheng2020", "autoregressive", 192),
  "paper_cheng2020_anchor_checkerboard": ("cheng2020", "checkerboard", 192),
  "paper_elic": ("elic", "charm_checkerboard", 320),
}


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_experiment_preset_composes(preset, monkeypatch, tmp_path):
  monkeypatch.setenv("CBEXP_KODAK_DIR", str(tmp_path))
  cfg = compose([f"experiment={preset}"])
  OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
  if preset.startswith("paper_"):
    backbone, entropy, latent_depth = PAPER_MODELS[preset]
    assert (cfg.transform.name, cfg.entropy.name) == (backbone, entropy)
    assert cfg.transform.num_filters == 192 and cfg.transform.latent_depth == latent_depth
    assert cfg.dataset.name == "clic" and cfg.eval.set == "kodak"
    assert cfg.eval.path == str(tmp_path)  # Kodak from $CBEXP_KODAK_DIR
    assert cfg.trainer.steps == 2_000_000 and cfg.lmbda == 0.01
    assert cfg.schedule.boundaries == [0.9] and cfg.schedule.rates == [1e-4, 1e-5]


def test_quickstart_is_small_and_offline():
  cfg = compose(["experiment=quickstart"])
  assert cfg.transform.num_filters == 16 and list(cfg.entropy.hidden_filters) == [16, 16]
  assert cfg.trainer.patch_size == 64 and cfg.trainer.steps <= 500
  assert cfg.dataset.source == "skimage" and cfg.eval.source == "skimage"
  assert cfg.eval.max_images == 3


def test_command_line_beats_preset():
  cfg = compose(["experiment=quickstart", "entropy=charm", "trainer.steps=7"])
  assert cfg.entropy.name == "charm" and cfg.trainer.steps == 7


def test_unknown_group_option_is_one_line():
  message = check_group_overrides(["entropy=charmm"])
  assert message == "unknown entropy model 'charmm' (known: " + ", ".join(options("entropy")) + ")"
  assert "unknown dataset option 'nope'" in check_group_overrides(["dataset=default,nope"])
  assert (
    check_group_overrides(
      [
        "-m",
        "entropy=charm,checkerboard",
        "lmbda=0.1",
        "experiment=quickstart",
        "hydra/launcher=joblib",
      ]
    )
    is None
  )


@pytest.mark.parametrize(
  "arguments,expected",
  [
    (
      ["experiment=quickstart", "trainer.foo=1"],
      "error: Could not override 'trainer.foo'. To append to your config use +trainer.foo=1",
    ),
    (
      ["transform.num_filters=[1"],
      "error: transform.num_filters=[1: no viable alternative at input '[1'",
    ),
  ],
)
def test_a_config_error_is_one_line_naming_the_key(arguments, expected, tmp_path):
  """Hydra's composition errors in one line with exit status 2, not Hydra's report (its
  message, the OmegaConf detail and the HYDRA_FULL_ERROR hint) with status 1."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("CBEXP_DEBUG", None)
  result = subprocess.run(
    [sys.executable, "-m", "cbexp.run", *arguments],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert (result.returncode, result.stderr.strip().splitlines()) == (2, [expected])
  assert not (tmp_path / "outputs").exists()


def test_run_names_are_deterministic_and_safe():
  assert run_name("") == "default"
  assert run_name("entropy=charm,lmbda=0.01") == "entropy=charm,lmbda=0.01"
  long = "dataset.path=/a/very/long/" + "x" * 200
  assert run_name(long) == run_name(long) and len(run_name(long)) < 100
  assert "/" not in run_name("dataset.path=/data/x") and run_name(long) != run_name(long + "y")


def test_schedule_checks():
  assert first_steps([0.9], 2_000_000) == [1_800_000]
  check([0.9], [1e-4, 1e-5])
  with pytest.raises(ScheduleError, match="1 boundaries need 2 rates"):
    check([0.9], [1e-4])
  with pytest.raises(ScheduleError, match="increasing fractions"):
    check([0.9, 0.5], [1, 2, 3])


def test_params_are_flattened_with_dots():
  flat = flatten(compose(["entropy=checkerboard"]))
  assert flat["entropy.name"] == "checkerboard" and flat["trainer.steps"] == "2000000"
  assert flat["lmbda"] == "0.01" and flat["schedule.rates"] == "[0.0001, 1e-05]"


@pytest.mark.parametrize(
  "launcher,target",
  [
    ("local_processes", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.cbexp_slurm.slurm_launcher.SlurmLauncher"),
    ("slurm_cpu", "hydra_plugins.cbexp_slurm.slurm_launcher.SlurmLauncher"),
  ],
)
def test_launcher_configs_compose(launcher, target):
  from hydra import compose as hydra_compose
  from hydra import initialize_config_dir

  with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = hydra_compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True)
  assert cfg.hydra.launcher._target_ == target
  assert "SweepCallback" in cfg.hydra.callbacks.sweep_tracking._target_


def test_optuna_sweeper_config_composes():
  pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper", reason="optional extra: pip install -e '.[optuna]'"
  )
  from hydra import compose as hydra_compose
  from hydra import initialize_config_dir

  with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = hydra_compose("config", ["hydra/sweeper=lr_search"], return_hydra_config=True)
  assert cfg.hydra.sweeper.storage is None and cfg.hydra.sweeper.direction == "minimize"
  assert cfg.hydra.sweeper.params["eval.objective"] == "rd_loss"


def test_resuming_a_run_saved_before_a_new_entropy_key(tmp_path):
  # A run directory whose config predates context_positions was built with the class default
  # (full_grid): resuming it with that value passes, with the new "coded" default it is refused.
  from omegaconf import OmegaConf

  from cbexp.config import ConfigError
  from cbexp.training.preflight import check_same_model

  cfg = compose(["entropy=checkerboard", "run_dir=x"])
  saved = OmegaConf.to_container(cfg, resolve=True)
  del saved["entropy"]["context_positions"]
  OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
  check_same_model(
    compose(["entropy=checkerboard", "entropy.context_positions=full_grid"]), tmp_path
  )
  with pytest.raises(ConfigError, match="entropy.context_positions=full_grid, not coded"):
    check_same_model(cfg, tmp_path)


# --- every config of every group, as lightning-hydra-template's tests/test_configs.py ------------


def default_groups():
  """The groups of the primary config's defaults list (``override``/``optional`` stripped)."""
  names = set()
  for entry in OmegaConf.load(CONF_DIR / "config.yaml").defaults:
    if not isinstance(entry, str):
      names.update(key.split()[-1] for key in entry)
  return names


def every_config():
  """(group, option) of every conf/<group>/<option>.yaml, hydra/* and preset groups included."""
  return [
    (path.parent.relative_to(CONF_DIR).as_posix(), path.stem)
    for path in sorted(CONF_DIR.rglob("*.yaml"))
    if path.parent != CONF_DIR
  ]


@pytest.mark.parametrize("group,option", every_config())
def test_every_config_of_every_group_composes_and_resolves(group, option, monkeypatch, tmp_path):
  from hydra import compose as hydra_compose
  from hydra import initialize_config_dir

  from cbexp.training.preflight import PLUGIN_EXTRAS

  monkeypatch.setenv("CBEXP_KODAK_DIR", str(tmp_path))
  if (group, option) in PLUGIN_EXTRAS:
    pytest.importorskip(PLUGIN_EXTRAS[group, option][0], reason="an optional extra")
  appended = not group.startswith("hydra/") and group not in default_groups()
  overrides = [f"{'+' if appended else ''}{group}={option}"]
  if option == "folder":  # the folder datasets have no default folder
    overrides.append(f"{group}.path={tmp_path}")
  with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = hydra_compose("config", overrides, return_hydra_config=True)
  assert cfg.hydra.runtime.choices[group] == option
  job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
  OmegaConf.to_container(job, resolve=True, throw_on_missing=True)
  if group.startswith(("hydra/launcher", "hydra/sweeper")):
    node = cfg.hydra[group.split("/")[1]]
    module, name = node._target_.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), name), node._target_


@pytest.mark.parametrize("name", options("entropy"))
def test_every_entropy_config_names_its_own_module_and_an_allowed_class(name):
  from cbexp.config import entropy_classes
  from cbexp.entropy.base import EntropyModel

  target = OmegaConf.load(CONF_DIR / "entropy" / f"{name}.yaml")._target_
  assert target in entropy_classes()
  module, class_name = target.rsplit(".", 1)
  assert module == f"cbexp.entropy.{name}"  # conf/entropy/<name>.yaml -> cbexp/entropy/<name>.py
  assert issubclass(getattr(importlib.import_module(module), class_name), EntropyModel)


def test_the_analysis_config_composes_and_resolves(tmp_path):
  cfg = compose([f"out={tmp_path}"], config_name="analysis")
  OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


# --- every command answers --help: `cbexp <command>` and `python -m cbexp.<module>` -------------

# The `python -m` module of a command, where it is not cbexp.<command>.
PYTHON_M = {"train": "cbexp.run", "analyze": "cbexp.analysis"}


def commands():
  from cbexp.cli.__main__ import COMMANDS

  return sorted(COMMANDS)


def answer(tmp_path, *arguments):
  env = {k: v for k, v in os.environ.items() if k != "CBEXP_DEBUG"}
  return subprocess.run(
    [sys.executable, "-m", *arguments, "--help"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize("command", commands())
def test_every_command_answers_help_both_ways(command, tmp_path):
  console = answer(tmp_path, "cbexp.cli", command)  # what the `cbexp` console script runs
  module = answer(tmp_path, PYTHON_M.get(command, f"cbexp.{command}"))
  for result in (console, module):
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not list(tmp_path.iterdir())  # --help writes nothing
