"""Dataset helpers for users with network access.

    python -m cbexp.datasets download-kodak <dir> [--url BASE]

downloads the 24 Kodak images (kodim01.png ... kodim24.png) into <dir>; then
``export CBEXP_KODAK_DIR=<dir>`` (or ``eval.path=<dir>``) makes ``eval=kodak`` use them.
CLIC 2020 needs no helper: ``dataset=clic`` downloads it through tensorflow-datasets on first use.
"""
import argparse
import pathlib
import sys
import urllib.error
import urllib.request

KODAK_URL = "https://r0k.us/graphics/kodak/kodak"
KODAK_NAMES = tuple(f"kodim{i:02d}.png" for i in range(1, 25))


def download_kodak(directory, base_url=KODAK_URL, timeout=60.0):
  """Downloads the missing Kodak images into ``directory``; returns their paths. Every file is
  checked to be a PNG before it is kept (a proxy's HTML page is not an image)."""
  from cbexp.images import DataError, load_image
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for name in KODAK_NAMES:
    path = directory / name
    if not path.is_file():
      url = f"{base_url.rstrip('/')}/{name}"
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          content = response.read()
      except (urllib.error.URLError, OSError) as error:
        raise OSError(f"{url}: download failed ({getattr(error, 'reason', error)})") from None
      partial = path.with_suffix(".part")
      partial.write_bytes(content)
      try:
        load_image(partial)
      except DataError:
        partial.unlink()
        raise OSError(f"{url}: not a PNG image") from None
      partial.rename(path)
    paths.append(path)
  return paths


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m cbexp.datasets", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  kodak = commands.add_parser("download-kodak", help="download the 24 Kodak images")
  kodak.add_argument("directory")
  kodak.add_argument("--url", default=KODAK_URL, help="base URL of kodim01.png ... kodim24.png")
  args = parser.parse_args(argv)
  try:
    paths = download_kodak(args.directory, args.url)
  except OSError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"{len(paths)} Kodak images in {args.directory}; use them with "
        f"CBEXP_KODAK_DIR={pathlib.Path(args.directory).absolute()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
