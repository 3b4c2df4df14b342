"""``cbexp analyze [experiment_name=...] [sweep_id=...] [out=...] | published_only=true``
(``python -m cbexp.analysis``): RD curves, BD-rate and tables from MLflow runs.

Config: conf/analysis.yaml (Hydra); the work is cbexp.analysis.report. Bad input exits with one
line ``cbexp analyze: error: ...`` on stderr and status 2.
"""

import sys

import hydra
from omegaconf import DictConfig

from cbexp.cli.common import run_command
from cbexp.config import CONF_DIR

PROG = "cbexp analyze"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analysis")
def hydra_main(cfg: DictConfig):
  status = run_command(PROG, analyze, cfg)
  if status:
    sys.exit(status)


def analyze(cfg):
  from cbexp.analysis import report

  result = report.analyze_published(cfg) if cfg.published_only else report.analyze_runs(cfg)
  for run_id, why in result.get("skipped", ()):
    print(f"left out run {run_id}: {why}")
  print(
    f"wrote {result['out']}/ ({len(result['figures'])} figure files, "
    f"tables: {', '.join(result['tables'])})"
  )
  if result.get("analysis_run_id"):
    print(f"logged to MLflow run {result['analysis_run_id']}")


def check_overrides(arguments):
  """Hydra reports a bad override in several lines: composing first reports it in one. Flags
  (--help, --cfg) and hydra.* overrides are left to Hydra."""
  from cbexp.config import compose

  if all(not a.startswith(("-", "hydra.")) for a in arguments):
    compose(arguments, config_name="analysis")


def main():
  status = run_command(PROG, check_overrides, sys.argv[1:])
  if status:
    return status
  hydra_main()


if __name__ == "__main__":
  sys.exit(main())
