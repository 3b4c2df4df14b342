"""``python -m cbexp.classical``: classical codecs as RD points on any images, the same as
``cbexp classical`` (``cbexp.cli.classical``)."""

import sys

from cbexp.cli.classical import main

if __name__ == "__main__":
  sys.exit(main())
