"""``cbexp conformance`` (``python -m cbexp.conformance``): the decode conformance matrix. Each
model's ``.cbx`` files, written in the reference configuration, are decoded in fresh processes
in other numeric environments; the teacher-forced decode counts the scale indexes and symbols
that differ. The work: cbexp.evaluation.conformance (its report: conformance_report).

Examples:
  python -m cbexp.conformance model=<run>/model numerics=float,exact images=<folder>
  python -m cbexp.conformance entropy=hyperprior transform=tiny max_images=2 configs=threads1

Decode configurations (configs=):
"""

import sys

from cbexp.cli.common import HELP_FLAGS, command_help, run_command, run_composed

PROG = "cbexp conformance"


def conformance(argv):
  prog = sys.argv[0] if sys.argv[0].startswith("cbexp ") else "python -m cbexp.conformance"
  run_composed("conformance", argv, "cbexp.evaluation.conformance", command=" ".join([prog, *argv]))


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--worker"] and len(argv) == 2:  # one configuration's process (internal)
    from cbexp.evaluation.conformance import worker_main

    return run_command(PROG, worker_main, argv[1])
  if any(a in HELP_FLAGS for a in argv):
    from cbexp.evaluation.conformance import configs_help

    print(command_help(__doc__ + configs_help(), "conformance"))
    return 0
  return run_command(PROG, conformance, argv)


if __name__ == "__main__":
  sys.exit(main())
