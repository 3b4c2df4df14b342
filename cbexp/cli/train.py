"""``cbexp train`` (``python -m cbexp.run``): trains, evaluates and logs one model; ``-m`` sweeps.

Config: conf/config.yaml (Hydra). The job is cbexp.training.job, after the checks of
cbexp.training.preflight. A user's mistake ends a job with one line ``error: ...`` on stderr and
in run.log, exit status 2; in a sweep the other jobs go on and the summary counts it.
"""

import logging
import os
import signal
import sys

import hydra
from omegaconf import DictConfig

from cbexp.cli.common import USER_ERRORS, describe, quiet_unless_debug
from cbexp.config import CONF_DIR
from cbexp.errors import USER_ERROR, Terminated

log = logging.getLogger("cbexp.run")  # stderr and run.log (conf/hydra/job_logging/cbexp.yaml)
SWEEP_FAILED = 1  # the exit status of a sweep some of whose jobs failed


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
      # The sweep's other jobs go on; its summary counts this one.
      raise sweeps.JobFailed(line) from None
    if getattr(error, "exit_at_once", False):
      logging.shutdown()  # run.log complete; the run is marked already
      os._exit(USER_ERROR)
    sys.exit(USER_ERROR)


def main():
  quiet_unless_debug()  # before TensorFlow's import: its start-up lines are not the user's news
  from cbexp.tracking import sweeps
  from cbexp.training.preflight import check_group_overrides

  problem = check_group_overrides(sys.argv[1:])
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return USER_ERROR
  signal.signal(signal.SIGTERM, _terminate)
  # Hydra's errors come back here to be said in one line (not Hydra's report with its hint).
  os.environ["HYDRA_FULL_ERROR"] = "1"
  stopped, status = None, 0
  try:
    hydra_main()
  except sweeps.JobFailed:
    status = SWEEP_FAILED  # each failed job's line is printed; the summary counts them
  except sweeps.SweepStopped as error:
    stopped, status = str(error), 130
  except KeyboardInterrupt as error:
    stopped, status = ("SIGTERM" if isinstance(error, Terminated) else "Ctrl-C"), 130
  except USER_ERRORS as error:
    if os.environ.get("CBEXP_DEBUG"):
      raise
    problem, status = describe(error), USER_ERROR
  except BaseException as error:  # a bug (its traceback follows) or an exit: the parent run ends
    sweeps.print_sweep_summary(problem=f"the launcher stopped: {error.__class__.__name__}")
    raise
  # After a multirun (no-op otherwise): the parent run ended, failed jobs included.
  if not sweeps.print_sweep_summary(problem=problem, stopped=stopped):
    if problem:
      print(f"error: {problem}", file=sys.stderr)
    elif stopped:
      print(f"cbexp.run: interrupted ({stopped})", file=sys.stderr)
  return status


def _terminate(signum, frame):
  raise Terminated()


if __name__ == "__main__":
  sys.exit(main())
