"""``python -m cbexp.export``: exports a trained model as a SavedModel. The same as ``cbexp export`` (``cbexp.codec.savedmodel``)."""
import sys

from cbexp.codec.savedmodel import main

if __name__ == "__main__":
  sys.exit(main())
