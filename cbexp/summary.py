"""``python -m cbexp.summary``: parameter counts of a model config. The same as ``cbexp summary`` (``cbexp.evaluation.size``)."""
import sys

from cbexp.evaluation.size import main

if __name__ == "__main__":
  sys.exit(main())
