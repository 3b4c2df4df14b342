"""``python -m cbexp.export``: the same as ``cbexp export`` (``cbexp.cli.export``)."""

import sys

from cbexp.cli.export import main

if __name__ == "__main__":
  sys.exit(main())
