"""Images in, tensors out: loading with clear errors, image folders, and training crops.
TensorFlow is imported only by the functions that build tensors, so that checking a config
(file lists, image sizes) is fast.

Dataset *configs* (``conf/dataset/``) choose among these sources; this module is the code.
"""
import contextlib
import glob
import os
import pathlib

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

# Colour photographs that ship inside the scikit-image wheel: the offline default.
SKIMAGE_COLOUR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                         "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png")


class DataError(ValueError):
  """Bad input data; the message names the file and the problem."""


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


def load_image(path, max_pixels=None):
  """Reads an image file as uint8 [H, W, 3] RGB, turned upright by its EXIF orientation.
  Grayscale and RGBA (alpha dropped) are converted to RGB; 16-bit images are scaled to 8 bits.
  ``max_pixels``: Pillow's decompression-bomb limit while reading (default: Pillow's own).
  Anything unreadable raises DataError."""
  from PIL import Image, ImageOps, UnidentifiedImageError
  path = check_image_path(path)
  limit = pillow_pixel_limit(max_pixels) if max_pixels else contextlib.nullcontext()
  try:
    with limit, Image.open(path) as image:
      ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit samples (Pillow opens 16-bit grayscale PNGs as "I;16" or "I"): always scale by
        # the 16-bit range, never by the image's own maximum (a dark image must stay dark).
        array = np.asarray(image, dtype=np.float64)
        array = np.round(array / 65535.0 * 255.0)
        array = np.clip(array, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except Image.DecompressionBombError:
    raise DataError(f"{path}: image above the pixel limit of "
                    f"{max_pixels or Image.MAX_IMAGE_PIXELS} pixels") from None
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


def random_crops(paths, patch_size, batch_size, seed=0, check_sizes=True, part=None):
  """Endless tf.data pipeline of random patch_size crops, batched. Images are decoded once and
  kept in memory (fine for folders of a few hundred images; CLIC goes through tfds instead).

  ``part=(index, count)``: the share of one of ``count`` input pipelines (tf.distribute's input
  context, one per worker). Every pipeline draws the same seeded crop positions, cut into global
  batches of ``batch_size``, and keeps only the index-th of ``count`` equal slices of each, batched
  by ``batch_size // count``: the workers read distinct crops which together are exactly the
  batches one process would read (the same training data for any number of workers)."""
  import tensorflow as tf
  images = [load_image(p) for p in paths]
  if check_sizes:
    small = [f"{p} ({im.shape[1]}x{im.shape[0]})" for p, im in zip(paths, images)
             if im.shape[0] < patch_size or im.shape[1] < patch_size]
    if small:
      raise DataError(f"images smaller than the {patch_size}x{patch_size} patch: "
                      + ", ".join(small[:5]) + (" ..." if len(small) > 5 else ""))
  index, count = part or (0, 1)
  if batch_size % count:
    raise DataError(f"batch size {batch_size} cannot be split into {count} equal parts")
  share = batch_size // count
  first, last = index * share, (index + 1) * share  # this pipeline's slice of every batch

  def generator():
    rng = np.random.default_rng(seed)
    position = 0
    while True:
      image = images[rng.integers(len(images))]
      top = rng.integers(image.shape[0] - patch_size + 1)
      left = rng.integers(image.shape[1] - patch_size + 1)
      if first <= position % batch_size < last:
        yield image[top:top + patch_size, left:left + patch_size]
      position += 1

  dataset = tf.data.Dataset.from_generator(
      generator, output_signature=tf.TensorSpec([patch_size, patch_size, 3], tf.uint8))
  return dataset.map(lambda x: tf.cast(x, tf.float32)).batch(share).prefetch(2)


# --- dataset and eval-set configs (conf/dataset/, conf/eval/) -> image lists and pipelines -------

def config_image_paths(source, path, what="dataset", files=None):
  """The image files a ``dataset``/``eval`` config names: ``skimage`` (the offline default) or
  a folder/glob (``path``; Kodak's config fills it from $CBEXP_KODAK_DIR), optionally only the
  named ``files`` of it (a fixed train/test split of one folder, e.g. Kodak 1-12 / 13-24)."""
  if source == "skimage":
    return default_image_paths()
  if source != "folder":
    raise DataError(f"{what}.source: unknown source {source!r} (skimage, folder or tfds)")
  if not path:
    raise DataError(f"{what}.path is not set (for Kodak: set CBEXP_KODAK_DIR or {what}.path; "
                    f"python -m cbexp.datasets download-kodak <dir> fetches it)")
  paths = list_images(os.path.expanduser(str(path)))
  if not files:
    return paths
  by_name = {os.path.basename(p): p for p in paths}
  missing = [name for name in files if name not in by_name]
  if missing:
    raise DataError(f"{what}.files: {missing[0]} is not in {path}"
                    + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
  return [by_name[name] for name in files]


def split_train_val(paths, val_images):
  """Holds out the last ``val_images`` images (sorted order) for validation."""
  if len(paths) <= val_images:
    raise DataError(f"dataset has {len(paths)} images: need more than val_images={val_images} "
                    f"(the last ones are held out for validation)")
  return (paths[:-val_images], paths[-val_images:]) if val_images else (paths, [])


def center_crops(paths, patch_size):
  """Fixed validation batch: the central patch_size crop of every image, float 0..255."""
  import tensorflow as tf
  crops = []
  for path in paths:
    image = load_image(path)
    top, left = (image.shape[0] - patch_size) // 2, (image.shape[1] - patch_size) // 2
    if top < 0 or left < 0:
      raise DataError(f"{path} ({image.shape[1]}x{image.shape[0]}): smaller than the "
                      f"{patch_size}x{patch_size} patch")
    crops.append(image[top:top + patch_size, left:left + patch_size])
  return tf.cast(np.stack(crops), tf.float32)


def tfds_random_crops(name, split, patch_size, batch_size, data_dir=None, part=None):
  """CLIC (or any tfds image dataset) as endless random crops, as in tfc's ms2020 script.
  Downloads the dataset on first use; images smaller than the patch are skipped.
  ``part=(index, count)``: this input pipeline reads every count-th image (distinct images per
  worker) and batches ``batch_size // count`` crops."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  index, count = part or (0, 1)
  if batch_size % count:
    raise DataError(f"batch size {batch_size} cannot be split into {count} equal parts")
  batch_size //= count
  dataset = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=True)
  if count > 1:
    dataset = dataset.shard(count, index)
  dataset = dataset.map(lambda item: item["image"])
  dataset = dataset.filter(lambda image: tf.reduce_all(tf.shape(image)[:2] >= patch_size))
  dataset = dataset.repeat().shuffle(64)
  dataset = dataset.map(lambda image: tf.cast(
      tf.image.random_crop(image, (patch_size, patch_size, 3)), tf.float32),
      num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def tfds_center_crops(name, split, patch_size, count, data_dir=None):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  dataset = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
  crops = []
  for item in dataset:
    image = item["image"]
    if min(image.shape[0], image.shape[1]) >= patch_size:
      crops.append(tf.image.resize_with_crop_or_pad(image, patch_size, patch_size))
    if len(crops) == count:
      break
  return tf.cast(tf.stack(crops), tf.float32)


def check_images(paths, patch_size=None):
  """Decodes every image in full (a truncated or corrupt file is found now, not after hours of
  training) and, with ``patch_size``, refuses images smaller than the patch. Raises DataError
  naming the first bad image; images are not kept."""
  from PIL import Image, UnidentifiedImageError
  small = []
  for path in paths:
    try:
      with Image.open(check_image_path(path)) as image:
        width, height = image.size
        image.load()  # the whole file: Pillow's open() reads the header only
    except Image.DecompressionBombError:
      raise DataError(f"{path}: image above Pillow's pixel limit ({Image.MAX_IMAGE_PIXELS})") \
          from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
      raise DataError(f"{path}: not a readable image ({error.__class__.__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if patch_size and (height < patch_size or width < patch_size):
      small.append(f"{path} ({width}x{height})")
  if small:
    raise DataError(f"image smaller than the {patch_size}x{patch_size} patch: {small[0]}"
                    + (f" and {len(small) - 1} more" if len(small) > 1 else ""))
