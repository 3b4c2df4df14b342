"""``python -m cbexp.codec``: compresses, decompresses and evaluates images. The same as ``cbexp codec`` (``cbexp.codec.codec``)."""
import sys

from cbexp.codec.codec import main

if __name__ == "__main__":
  sys.exit(main())
