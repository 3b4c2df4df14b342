"""``cbexp memory`` (``python -m cbexp.memory``): peak resident memory and time of compress and
decompress by image size, tiled and untiled, for untrained models (built as ``cbexp train``
builds them) or trained ones (any model reference), each measurement in a fresh process. The
work: cbexp.evaluation.memory.

Examples:
  python -m cbexp.memory                        the paper checkerboard and ChARM, 0.4 to 67 MP
  python -m cbexp.memory entropy=hyperprior transform=tiny sizes_mp=0.1,0.4 budgets_mb=0,8
  python -m cbexp.memory model=<run>/model sizes_mp=12 budgets_mb=256,512,1024
"""

import sys

from cbexp.cli.common import (
  HELP_FLAGS,
  command_help,
  release_freed_memory,
  return_freed_memory,
  run_command,
  run_composed,
)

PROG = "cbexp memory"


def memory(argv):
  prog = sys.argv[0] if sys.argv[0].startswith("cbexp ") else "python -m cbexp.memory"
  run_composed("memory", argv, "cbexp.evaluation.memory", command=" ".join([prog, *argv]))


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--worker"] and len(argv) == 2:  # one measurement's process (internal)
    import json

    from cbexp.evaluation.memory import worker_main

    if json.loads(argv[1]).get("budget"):  # as `cbexp codec compress/decompress` does
      return_freed_memory()
    return run_command(PROG, lambda spec: worker_main(spec, release_freed_memory), argv[1])
  if any(a in HELP_FLAGS for a in argv):
    print(command_help(__doc__, "memory"))
    return 0
  return run_command(PROG, memory, argv)


if __name__ == "__main__":
  sys.exit(main())
