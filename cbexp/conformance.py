"""``python -m cbexp.conformance``: the decode conformance matrix, the same as
``cbexp conformance`` (``cbexp.cli.conformance``)."""

import sys

from cbexp.cli.conformance import main

if __name__ == "__main__":
  sys.exit(main())
