"""``python -m cbexp.memory``: the codec's memory benchmark, the same as ``cbexp memory``
(``cbexp.cli.memory``)."""

import sys

from cbexp.cli.memory import main

if __name__ == "__main__":
  sys.exit(main())
