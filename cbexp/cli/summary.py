"""``cbexp summary [entropy=<name>] [group=option ...] [key=value ...]``: a model's size.

Example: python -m cbexp.summary entropy=checkerboard   (the paper configuration)

Prints ``trainable_parameters: <exact integer>`` (Keras trainable-variable count, the number the
published study reports) and the breakdown by component. tfc's default RDFT kernel
parameterization (analysis, synthesis, hyper-analysis) stores more numbers than the kernels have
taps, so the count of real kernel taps is printed too, labelled as such.
"""

import sys

from cbexp.cli.common import run_key_values

PROG = "cbexp summary"


def print_summary(overrides):
  from cbexp.config import build_model, compose
  from cbexp.evaluation.size import summarize

  cfg = compose(overrides)
  print(summarize(build_model(cfg), cfg))


def main(argv=None):
  return run_key_values(PROG, print_summary, sys.argv[1:] if argv is None else argv, __doc__)


if __name__ == "__main__":
  sys.exit(main())
