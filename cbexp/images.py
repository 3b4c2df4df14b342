"""Image files in: loading with clear errors (EXIF orientation, 16-bit, grayscale, pixel limits),
image folders and the configured image sets. NumPy and Pillow only, so that checking a config
or a command's input is fast; every package that reads images uses this module."""

import contextlib
import glob
import os
import pathlib
import struct

import numpy as np

from cbexp.errors import CbexpError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

# Colour photographs that ship inside the scikit-image wheel: the offline default.
SKIMAGE_COLOUR_PHOTOS = (
  "astronaut.png",
  "chelsea.png",
  "coffee.png",
  "rocket.jpg",
  "motorcycle_left.png",
  "hubble_deep_field.jpg",
  "ihc.png",
)


class DataError(CbexpError, ValueError):
  """Bad input data; the message names the file and the problem."""


# TensorFlow wraps an array with this alignment without copying it (``cbexp.codec.codec``'s
# ``image_tensor``); an image at the pixel limit is 200 MB.
TENSOR_ALIGNMENT = 64


def aligned_empty(shape, dtype=np.uint8):
  """An uninitialised C-contiguous array whose data starts on a TENSOR_ALIGNMENT boundary."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % TENSOR_ALIGNMENT
  return raw[start : start + size].view(dtype).reshape(shape)


@contextlib.contextmanager
def pillow_pixel_limit(max_pixels):
  """Pillow's decompression-bomb limit set to ``max_pixels`` inside the block (None: no limit),
  restored after: the caller's own pixel limit is the one that counts (Pillow refuses images
  above twice its limit, 179 megapixels by default, whatever the caller allows)."""
  from PIL import Image

  previous = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = max_pixels
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = previous


def check_image_path(path):
  """Refuses, naming the problem, a path that is not a non-empty file."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise DataError(f"{path}: is a directory, expected an image file")
  if not path.is_file():
    raise DataError(f"{path}: no such image file")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: empty file")
  return path


# Formats whose integer samples have at most 16 bits, so that Pillow's 32-bit "I" mode holds a
# 16-bit range (a 16-bit PGM opens as "I"); elsewhere (TIFF) "I" means 32-bit samples.
SIXTEEN_BIT_FORMATS = ("PNG", "PPM")


def check_image(image, path):
  """Refuses, in one line, an image file (open in Pillow, header read) that ``load_image`` would
  read into a wrong image or that is damaged while Pillow says nothing:

  * 32-bit float and 32-bit integer samples: they have no fixed range to map to 8 bits. Scaling
    by the type's range would turn a 0..1 float image black, and a 32-bit image written with a
    16-bit range black too; scaling by the image's own maximum would change its brightness.
  * a PNG that ends before its IEND chunk: Pillow decodes the pixels of a file cut after its
    image data without a word, but a cut file is a damaged one (an interrupted copy or
    download), refused as a truncated .cbx file is. Data after IEND is ignored, as by every
    decoder."""
  if image.mode == "F":
    kind = "32-bit float"
  elif image.mode == "I" and image.format not in SIXTEEN_BIT_FORMATS:
    kind = "32-bit integer"
  else:
    kind = None
  if kind:
    raise DataError(
      f"{path}: {kind} samples (Pillow mode {image.mode}) have no fixed range that maps to 8 "
      "bits; convert the image to 8 or 16 bits per sample (e.g. a PNG) with the range you mean"
    )
  if image.format == "PNG" and not _png_has_end(path):
    raise DataError(
      f"{path}: truncated PNG (the file ends before its IEND chunk); copy or save it again"
    )


PNG_SIGNATURE_BYTES = 8


def _png_has_end(path):
  """Whether a PNG file's chunks lead to an IEND chunk: each chunk's length and type are read,
  its data skipped, so the cost is a few bytes per chunk whatever the image's size."""
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    f.seek(PNG_SIGNATURE_BYTES)
    while True:
      head = f.read(8)
      if len(head) < 8:
        return False
      length, kind = struct.unpack(">I4s", head)
      if kind == b"IEND":
        return True
      position = f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
      if position > size:
        return False


def load_image(path, max_pixels=None):
  """Reads an image file as uint8 [H, W, 3] RGB, turned upright by its EXIF orientation.
  Grayscale and RGBA (alpha dropped) are converted to RGB; 16-bit images are scaled to 8 bits;
  32-bit float and integer images, and truncated PNGs, are refused (``check_image``).
  ``max_pixels``: Pillow's decompression-bomb limit while reading (default: Pillow's own).
  Anything unreadable raises DataError."""
  from PIL import Image, ImageOps, UnidentifiedImageError

  path = check_image_path(path)
  limit = pillow_pixel_limit(max_pixels) if max_pixels else contextlib.nullcontext()
  try:
    with limit, Image.open(path) as image:
      check_image(image, path)
      ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit samples (Pillow opens 16-bit grayscale PNGs as "I;16" or "I"): always scale by
        # the 16-bit range, never by the image's own maximum (a dark image must stay dark).
        array = np.asarray(image, dtype=np.float64)
        array = np.round(array / 65535.0 * 255.0)
        array = np.clip(array, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
      rgb = image.convert("RGB")
      out = aligned_empty((rgb.height, rgb.width, 3))  # the codec reads it without a copy
      out[...] = np.asarray(rgb, dtype=np.uint8)
      return out
  except Image.DecompressionBombError:
    raise DataError(
      f"{path}: image above the pixel limit of {max_pixels or Image.MAX_IMAGE_PIXELS} pixels"
    ) from None
  except (UnidentifiedImageError, OSError, SyntaxError) as error:
    raise DataError(f"{path}: not a readable image ({error.__class__.__name__})") from None


def list_images(pattern):
  """Image files matching a folder or a glob pattern, sorted. Raises if there are none."""
  pattern = str(pattern)
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*")
  paths = sorted(
    p
    for p in glob.glob(pattern, recursive=True)
    if p.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(p)
  )
  if not paths:
    raise DataError(f"{pattern}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
  return paths


def default_image_paths():
  """The offline default: scikit-image's bundled colour photographs."""
  import skimage

  folder = pathlib.Path(skimage.__file__).parent / "data"
  return [str(folder / name) for name in SKIMAGE_COLOUR_PHOTOS if (folder / name).is_file()]


def config_image_paths(source, path, what="dataset", files=None):
  """The image files a ``dataset``/``eval`` config names: ``skimage`` (the offline default) or
  a folder/glob (``path``; Kodak's config fills it from $CBEXP_KODAK_DIR), optionally only the
  named ``files`` of it (a fixed train/test split of one folder, e.g. Kodak 1-12 / 13-24)."""
  if source == "skimage":
    return default_image_paths()
  if source != "folder":
    raise DataError(f"{what}.source: unknown source {source!r} (skimage, folder or tfds)")
  if not path:
    raise DataError(
      f"{what}.path is not set (for Kodak: set CBEXP_KODAK_DIR or {what}.path; "
      f"python -m cbexp.datasets download-kodak <dir> fetches it)"
    )
  paths = list_images(os.path.expanduser(str(path)))
  if not files:
    return paths
  by_name = {os.path.basename(p): p for p in paths}
  missing = [name for name in files if name not in by_name]
  if missing:
    raise DataError(
      f"{what}.files: {missing[0]} is not in {path}"
      + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else "")
    )
  return [by_name[name] for name in files]


def check_images(paths, patch_size=None):
  """Decodes every image in full (a truncated or corrupt file is found now, not after hours of
  training) and, with ``patch_size``, refuses images smaller than the patch. Raises DataError
  naming the first bad image; images are not kept."""
  from PIL import Image, UnidentifiedImageError

  small = []
  for path in paths:
    try:
      with Image.open(check_image_path(path)) as image:
        check_image(image, path)
        width, height = image.size
        image.load()  # the whole file: Pillow's open() reads the header only
    except Image.DecompressionBombError:
      raise DataError(
        f"{path}: image above Pillow's pixel limit ({Image.MAX_IMAGE_PIXELS})"
      ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
      raise DataError(
        f"{path}: not a readable image ({error.__class__.__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''})"
      ) from None
    if patch_size and (height < patch_size or width < patch_size):
      small.append(f"{path} ({width}x{height})")
  if small:
    raise DataError(
      f"image smaller than the {patch_size}x{patch_size} patch: {small[0]}"
      + (f" and {len(small) - 1} more" if len(small) > 1 else "")
    )
