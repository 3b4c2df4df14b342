"""``python -m cbexp.codec``: the same as ``cbexp codec`` (``cbexp.cli.codec``)."""

import sys

from cbexp.cli.codec import main

if __name__ == "__main__":
  sys.exit(main())
