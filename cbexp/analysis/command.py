"""python -m cbexp.analysis [experiment_name=...] [sweep_id=...] [out=...] | published_only=true

Config: conf/analysis.yaml. Bad input exits with one line on stderr and status 2.
"""
import sys

import hydra
from omegaconf import DictConfig

from cbexp.analysis.points import AnalysisError
from cbexp.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analysis")
def hydra_main(cfg: DictConfig):
  from cbexp.analysis import report
  try:
    result = report.analyze_published(cfg) if cfg.published_only else report.analyze_runs(cfg)
  except AnalysisError as e:
    print(f"cbexp.analysis: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {result['out']}/ ({len(result['figures'])} figure files, "
        f"tables: {', '.join(result['tables'])})")
  if result.get("analysis_run_id"):
    print(f"logged to MLflow run {result['analysis_run_id']}")


def check_overrides(arguments):
  """Hydra reports a bad override in several lines; compose first to report it in one."""
  from hydra.errors import HydraException
  from omegaconf.errors import OmegaConfBaseException

  from cbexp.config import compose
  overrides = [a for a in arguments if not a.startswith("-") and not a.startswith("hydra.")]
  if len(overrides) < len(arguments):  # --help, --cfg, hydra.*: left to Hydra
    return
  try:
    compose(overrides, config_name="analysis")
  except (HydraException, OmegaConfBaseException) as e:
    lines = str(e).strip().splitlines()
    hint = next((line for line in lines[1:] if line.startswith("To append")), "")
    first = lines[0].strip('"') if lines else repr(e)
    print(f"cbexp.analysis: error: {first} {hint}".rstrip(), file=sys.stderr)
    sys.exit(2)


def main():
  check_overrides(sys.argv[1:])
  hydra_main()


if __name__ == "__main__":
  main()
