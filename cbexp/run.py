"""``python -m cbexp.run``: trains, evaluates and logs one model; the same as ``cbexp train``
(``cbexp.cli.train``)."""

import sys

from cbexp.cli.train import main

if __name__ == "__main__":
  sys.exit(main())
