"""``cbexp train`` (``python -m cbexp.run``): trains, evaluates and logs one model; ``-m`` sweeps.

Config: conf/config.yaml (Hydra). The job is cbexp.training.job, after the checks of
cbexp.training.preflight. A user's mistake ends a job with one line ``error: ...`` on stderr and
in run.log, exit status 2; in a sweep the other jobs go on and the summary counts it.
"""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from cbexp.cli.common import USER_ERRORS, describe, quiet_unless_debug
from cbexp.config import CONF_DIR
from cbexp.errors import USER_ERROR

log = logging.getLogger("cbexp.run")  # stderr and run.log (conf/hydra/job_logging/cbexp.yaml)


class JobFailed(RuntimeError):
  """A sweep job stopped by bad input (its one-line error is already printed)."""


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig):
  # By module name: a launcher (joblib, submitit) pickles this function by value.
  from cbexp.cli.train import run_job

  return run_job(cfg)


def run_job(cfg):
  """The job of ``cfg`` with the command's error policy (CBEXP_DEBUG=1: the traceback)."""
  from cbexp.tracking import sweeps
  from cbexp.training import preflight

  try:
    plan = preflight.validate(cfg)
    from cbexp.training import job  # TensorFlow, MLflow: once the config is known to be good

    return job.run_job(cfg, plan)
  except USER_ERRORS as error:
    if os.environ.get("CBEXP_DEBUG"):
      raise
    line = describe(error)
    log.error(f"error: {line}")
    if sweeps.sweep_info_or_none() is not None:
      raise JobFailed(line) from None  # the sweep's other jobs go on; its summary counts this
    sys.exit(USER_ERROR)


def main():
  quiet_unless_debug()  # before TensorFlow's import: its start-up lines are not the user's news
  from cbexp.tracking import sweeps
  from cbexp.training.preflight import check_group_overrides

  problem = check_group_overrides(sys.argv[1:])
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return USER_ERROR
  try:
    hydra_main()
  finally:
    sweeps.print_sweep_summary()  # after a multirun (no-op otherwise), failed jobs included


if __name__ == "__main__":
  sys.exit(main())
