"""Images in, tensors out: loading with clear errors, image folders, and training crops.

Dataset *configs* (``conf/dataset/``) choose among these sources; this module is the code.
"""
import glob
import os
import pathlib

import numpy as np
import tensorflow as tf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

# Colour photographs that ship inside the scikit-image wheel: the offline default.
SKIMAGE_COLOUR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                         "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png")


class DataError(ValueError):
  """Bad input data; the message names the file and the problem."""


def load_image(path):
  """Reads an image file as uint8 [H, W, 3] RGB. Grayscale and RGBA (alpha dropped) are
  converted to RGB; 16-bit images are scaled to 8 bits. Anything unreadable raises DataError."""
  from PIL import Image, UnidentifiedImageError
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such image file")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: empty file")
  try:
    with Image.open(path) as image:
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = np.round(array / (65535.0 if array.max() > 255 else 255.0) * 255.0)
        array = np.clip(array, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError) as error:
    raise DataError(f"{path}: not a readable image ({error.__class__.__name__})") from None


def kodak_dir(configured=None):
  """The Kodak folder: the configured path, else $CBEXP_KODAK_DIR."""
  folder = configured or os.environ.get("CBEXP_KODAK_DIR")
  if not folder:
    raise DataError("no Kodak folder: set CBEXP_KODAK_DIR or dataset.path "
                    "(python -m cbexp.datasets download-kodak fetches it)")
  return folder


def list_images(pattern):
  """Image files matching a folder or a glob pattern, sorted. Raises if there are none."""
  pattern = str(pattern)
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*")
  paths = sorted(p for p in glob.glob(pattern, recursive=True)
                 if p.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(p))
  if not paths:
    raise DataError(f"{pattern}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
  return paths


def default_image_paths():
  """The offline default: scikit-image's bundled colour photographs."""
  import skimage
  folder = pathlib.Path(skimage.__file__).parent / "data"
  return [str(folder / name) for name in SKIMAGE_COLOUR_PHOTOS if (folder / name).is_file()]


def random_crops(paths, patch_size, batch_size, seed=0, check_sizes=True):
  """Endless tf.data pipeline of random patch_size crops, batched. Images are decoded once and
  kept in memory (fine for folders of a few hundred images; CLIC goes through tfds instead)."""
  images = [load_image(p) for p in paths]
  if check_sizes:
    small = [f"{p} ({im.shape[1]}x{im.shape[0]})" for p, im in zip(paths, images)
             if im.shape[0] < patch_size or im.shape[1] < patch_size]
    if small:
      raise DataError(f"images smaller than the {patch_size}x{patch_size} patch: "
                      + ", ".join(small[:5]) + (" ..." if len(small) > 5 else ""))
  def generator():
    rng = np.random.default_rng(seed)
    while True:
      image = images[rng.integers(len(images))]
      top = rng.integers(image.shape[0] - patch_size + 1)
      left = rng.integers(image.shape[1] - patch_size + 1)
      yield image[top:top + patch_size, left:left + patch_size]

  dataset = tf.data.Dataset.from_generator(
      generator, output_signature=tf.TensorSpec([patch_size, patch_size, 3], tf.uint8))
  return dataset.map(lambda x: tf.cast(x, tf.float32)).batch(batch_size).prefetch(2)
