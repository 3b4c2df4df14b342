"""Data for users with network access.

    python -m cbexp.datasets download-kodak <dir> [--url BASE]

downloads the 24 Kodak images (kodim01.png ... kodim24.png) into <dir>; then
``export CBEXP_KODAK_DIR=<dir>`` (or ``eval.path=<dir>``) makes ``eval=kodak`` use them.
CLIC 2020 needs no helper: ``dataset=clic`` downloads it through tensorflow-datasets on first use.
"""

import pathlib
import sys

from cbexp.cli.common import one_line_parser, run_command
from cbexp.training.data import KODAK_URL, download_kodak

PROG = "cbexp datasets"


def download(args):
  paths = download_kodak(args.directory, args.url)
  print(
    f"{len(paths)} Kodak images in {args.directory}; use them with "
    f"CBEXP_KODAK_DIR={pathlib.Path(args.directory).absolute()}"
  )


def main(argv=None):
  parser = one_line_parser(PROG, __doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  kodak = commands.add_parser("download-kodak", help="download the 24 Kodak images")
  kodak.add_argument("directory")
  kodak.add_argument("--url", default=KODAK_URL, help="base URL of kodim01.png ... kodim24.png")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  return run_command(PROG, download, args)


if __name__ == "__main__":
  sys.exit(main())
