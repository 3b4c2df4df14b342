"""``cbexp bench`` (``python -m cbexp.bench``): decode time per stage, bpp, PSNR and MAC counts
of entropy models, untrained (built as ``cbexp train`` builds them) or trained (any model
reference). The work: cbexp.evaluation.bench.

Examples:
  python -m cbexp.bench images=<folder> max_images=2 repeats=1 transform=tiny
      a quick look: ChARM, checkerboard and hyperprior at tiny width, untrained, two images
  python -m cbexp.bench model=<run>/model,runs:/<run id> precision=float32,bfloat16 threads=2
  python -m cbexp.bench entropy=checkerboard entropy.context_positions=coded,full_grid
"""

import sys

from cbexp.cli.common import HELP_FLAGS, command_help, run_command, run_composed

PROG = "cbexp bench"


def bench(argv):
  run_composed("bench", argv, "cbexp.evaluation.bench")


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in HELP_FLAGS for a in argv):
    print(command_help(__doc__, "bench"))
    return 0
  return run_command(PROG, bench, argv)


if __name__ == "__main__":
  sys.exit(main())
