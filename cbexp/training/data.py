"""Training and validation crops from image files (cbexp.images) or TensorFlow Datasets, and
the Kodak download (``cbexp datasets download-kodak``). TensorFlow is imported only by the
functions that build tensors, so that checking a config (file lists, image sizes) is fast.
Dataset *configs* (``conf/dataset/``) choose among these sources; this module is the code.
"""

import pathlib
import urllib.error
import urllib.request

import numpy as np

from cbexp.errors import CbexpError
from cbexp.images import DataError, load_image

KODAK_URL = "https://r0k.us/graphics/kodak/kodak"
KODAK_NAMES = tuple(f"kodim{i:02d}.png" for i in range(1, 25))


class DownloadError(CbexpError, OSError):
  """A download that failed or did not give an image; the message names the URL."""


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
    small = [
      f"{p} ({im.shape[1]}x{im.shape[0]})"
      for p, im in zip(paths, images)
      if im.shape[0] < patch_size or im.shape[1] < patch_size
    ]
    if small:
      raise DataError(
        f"images smaller than the {patch_size}x{patch_size} patch: "
        + ", ".join(small[:5])
        + (" ..." if len(small) > 5 else "")
      )
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
        yield image[top : top + patch_size, left : left + patch_size]
      position += 1

  dataset = tf.data.Dataset.from_generator(
    generator, output_signature=tf.TensorSpec([patch_size, patch_size, 3], tf.uint8)
  )
  return dataset.map(lambda x: tf.cast(x, tf.float32)).batch(share).prefetch(2)


# --- dataset and eval-set configs (conf/dataset/, conf/eval/) -> image lists and pipelines -------


def split_train_val(paths, val_images):
  """Holds out the last ``val_images`` images (sorted order) for validation."""
  if len(paths) <= val_images:
    raise DataError(
      f"dataset has {len(paths)} images: need more than val_images={val_images} "
      f"(the last ones are held out for validation)"
    )
  return (paths[:-val_images], paths[-val_images:]) if val_images else (paths, [])


def center_crops(paths, patch_size):
  """Fixed validation batch: the central patch_size crop of every image, float 0..255."""
  import tensorflow as tf

  crops = []
  for path in paths:
    image = load_image(path)
    top, left = (image.shape[0] - patch_size) // 2, (image.shape[1] - patch_size) // 2
    if top < 0 or left < 0:
      raise DataError(
        f"{path} ({image.shape[1]}x{image.shape[0]}): smaller than the "
        f"{patch_size}x{patch_size} patch"
      )
    crops.append(image[top : top + patch_size, left : left + patch_size])
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
  dataset = dataset.map(
    lambda image: tf.cast(tf.image.random_crop(image, (patch_size, patch_size, 3)), tf.float32),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
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


def download_kodak(directory, base_url=KODAK_URL, timeout=60.0):
  """Downloads the missing Kodak images into ``directory``; returns their paths. Every file is
  checked to be a PNG before it is kept (a proxy's HTML page is not an image)."""
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
        raise DownloadError(f"{url}: download failed ({getattr(error, 'reason', error)})") from None
      partial = path.with_suffix(".part")
      partial.write_bytes(content)
      try:
        load_image(partial)
      except DataError:
        partial.unlink()
        raise DownloadError(f"{url}: not a PNG image") from None
      partial.rename(path)
    paths.append(path)
  return paths
