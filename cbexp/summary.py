"""``python -m cbexp.summary``: parameter counts of a model config; the same as ``cbexp summary``
(``cbexp.cli.summary``)."""

import sys

from cbexp.cli.summary import main

if __name__ == "__main__":
  sys.exit(main())
