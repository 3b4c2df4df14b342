"""``python -m cbexp.bench``: decode-time benchmark. The same as ``cbexp bench`` (``cbexp.evaluation.bench``)."""
import sys

from cbexp.evaluation.bench import main

if __name__ == "__main__":
  sys.exit(main())
