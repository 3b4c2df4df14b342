"""``python -m cbexp.datasets``: data downloads (Kodak); the same as ``cbexp datasets``
(``cbexp.cli.datasets``)."""

import sys

from cbexp.cli.datasets import main

if __name__ == "__main__":
  sys.exit(main())
