"""``python -m cbexp.analysis``: RD curves, BD-rate and tables from MLflow runs. The same as ``cbexp analyze`` (``cbexp.analysis.command``)."""
import sys

from cbexp.analysis.command import main

if __name__ == "__main__":
  sys.exit(main())
