"""``python -m cbexp.analysis``: RD curves, BD-rate and tables from MLflow runs; the same as
``cbexp analyze`` (``cbexp.cli.analyze``)."""

import sys

from cbexp.cli.analyze import main

if __name__ == "__main__":
  sys.exit(main())
