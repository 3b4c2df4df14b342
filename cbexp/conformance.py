"""``python -m cbexp.conformance``: the cross-environment conformance matrix. The same as ``cbexp conformance`` (``cbexp.evaluation.conformance``)."""
import sys

from cbexp.evaluation.conformance import main

if __name__ == "__main__":
  sys.exit(main())
