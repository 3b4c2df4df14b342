"""``python -m cbexp.run``: trains, evaluates and logs one model. The same as ``cbexp train`` (``cbexp.training.run``)."""
import sys

from cbexp.training.run import main

if __name__ == "__main__":
  sys.exit(main())
