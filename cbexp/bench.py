"""``python -m cbexp.bench``: the decode-time benchmark, the same as ``cbexp bench``
(``cbexp.cli.bench``)."""

import sys

from cbexp.cli.bench import main

if __name__ == "__main__":
  sys.exit(main())
