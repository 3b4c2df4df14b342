"""Classical image codecs as rate-distortion points, measured the way cbexp measures its models.

JPEG, WebP, AVIF and JPEG 2000 through Pillow; JPEG XL through pillow-jxl-plugin where it is
installed (the ``jxl`` extra); BPG through ``bpgenc``/``bpgdec`` where they are on PATH. Each
image is encoded at every value of a codec's grid (conf/classical.yaml) with fixed settings
(``Codec.settings``), the bytes are decoded back, and the row gets cbexp's own definitions
(``cbexp.evaluation.metrics``): bpp = 8 x the encoded file's bytes / pixels, PSNR and MS-SSIM of
the decoded image. A codec that cannot run here is skipped with a one-line note, never silently.
"""

import dataclasses
import functools
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
from typing import Callable

import numpy as np
import pandas as pd

from cbexp.errors import CbexpError
from cbexp.evaluation import metrics
from cbexp.evaluation.evaluate import summarize

# Per-image rows: which codec at which grid value, on which image (file digest), with which
# encoder (settings and library versions: a cached row is reused only for the same ones).
COLUMNS = (
  "codec",
  "quality",
  "image",
  "digest",
  "encoder",
  "height",
  "width",
  "bytes",
  "bpp",
  "psnr",
  "ms_ssim",
  "ms_ssim_db",
  "encode_s",
  "decode_s",
)
KEY = ("codec", "quality", "digest", "encoder")


class ClassicalError(CbexpError, ValueError):
  """A classical codec that is unknown, misconfigured or failed; the message names it."""


class CodingFailed(ClassicalError):
  """A codec that failed on one image at one grid value (the message names all three)."""


@dataclasses.dataclass(frozen=True)
class Codec:
  """One classical codec: how to encode a uint8 RGB image at one grid value and decode the
  bytes back, what the grid value means, and why it cannot run here (``missing``)."""

  name: str  # the config key: jpeg, webp, ...
  label: str  # legends and tables
  quality: str  # what a grid value is
  bounds: tuple  # the allowed grid values (inclusive)
  settings: str  # the fixed encoder settings, recorded with every row
  encode: Callable
  decode: Callable
  missing: Callable  # () -> None, or why the codec cannot run here
  library: Callable  # () -> the library or binary that codes, with its version


# Pillow's codecs: (label, Pillow format, Pillow feature, allowed grid values, fixed settings).
# The grid value is Pillow's ``quality``, except for JPEG 2000: the target bpp (one layer at
# that rate). The settings are written out with every row (``Codec.settings``).
PILLOW = {
  "jpeg": ("JPEG", "JPEG", "jpg", (1, 100), dict(subsampling="4:2:0", optimize=True)),
  "webp": ("WebP", "WEBP", "webp", (0, 100), dict(method=6, lossless=False)),
  # max_threads=1: libaom's bytes depend on the thread count; one thread, the same everywhere
  "avif": ("AVIF", "AVIF", "avif", (0, 100), dict(speed=6, subsampling="4:2:0", max_threads=1)),
  # a raw J2K codestream (no JP2 boxes), 9/7 wavelet with the colour transform, one layer
  "jpeg2000": (
    "JPEG 2000",
    "JPEG2000",
    "jpg_2000",
    (0.01, 24),
    dict(quality_mode="rates", irreversible=True, mct=1, no_jp2=True),
  ),
  # the JXL format comes from pillow-jxl-plugin (the jxl extra), not from Pillow itself
  "jpegxl": ("JPEG XL", "JXL", None, (0, 100), dict(effort=7, lossless=False)),
}


def _grid_option(name, value):
  """Pillow's keyword for a grid value: ``quality``; for JPEG 2000 the compression ratio of
  8-bit RGB (24 bits per pixel) at the target bpp, OpenJPEG's "rates" layer."""
  if name == "jpeg2000":
    return {"quality_layers": [24.0 / float(value)]}
  return {"quality": int(value)}


@functools.cache
def jxl_plugin():
  """Registers pillow-jxl-plugin's JXL format with Pillow; -> whether it is installed."""
  try:
    import pillow_jxl  # noqa: F401
  except ImportError:
    return False
  return True


def _pillow_encode(name, image_format, fixed):
  def encode(image, value):
    from PIL import Image

    jxl_plugin()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **fixed, **_grid_option(name, value))
    return buffer.getvalue()

  return encode


def decode_with_pillow(data):
  """The decoded image of encoded bytes, uint8 RGB."""
  from PIL import Image

  jxl_plugin()
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _pillow_missing(feature):
  if feature is None:  # JPEG XL
    return None if jxl_plugin() else "pillow-jxl-plugin is not installed (pip install -e '.[jxl]')"
  from PIL import features

  return None if features.check(feature) else f"this Pillow has no {feature} support"


def _pillow_library(feature):
  import PIL
  from PIL import features

  if feature is None:
    from importlib.metadata import version

    return f"pillow-jxl-plugin {version('pillow-jxl-plugin')}, Pillow {PIL.__version__}"
  if feature == "avif":  # libavif and the AV1 encoder it uses (libaom in Pillow's wheels)
    from PIL import _avif

    coders = getattr(_avif, "codec_versions", lambda: "coders unknown")()
    return f"Pillow {PIL.__version__}, libavif {features.version('avif')}, {coders}"
  feature = "libjpeg_turbo" if feature == "jpg" and features.check("libjpeg_turbo") else feature
  return f"Pillow {PIL.__version__}, {feature} {features.version(feature)}"


def _pillow_codec(name, label, image_format, feature, bounds, fixed):
  what = "target bpp" if name == "jpeg2000" else "Pillow quality"
  grid = "quality_layers=[24 / target bpp]" if name == "jpeg2000" else "quality=Q"
  settings = ", ".join([grid] + [f"{key}={value!r}" for key, value in fixed.items()])
  return Codec(
    name,
    label,
    what,
    bounds,
    f"Pillow {image_format}: {settings}",
    _pillow_encode(name, image_format, fixed),
    decode_with_pillow,
    lambda: _pillow_missing(feature),
    lambda: _pillow_library(feature),
  )


def _binaries_missing(*names):
  absent = [name for name in names if shutil.which(name) is None]
  return f"{', '.join(absent)} not on PATH" if absent else None


def _run_binary(command):
  """Runs an external coder; its failure is a one-line ClassicalError with its stderr."""
  done = subprocess.run(command, capture_output=True, text=True, timeout=600)
  if done.returncode:
    why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    raise ClassicalError(f"{command[0]} exited with status {done.returncode}: {why[0]}")


BPG_OPTIONS = ["-f", "444", "-b", "8"]  # 4:4:4 chroma (CompressAI's BPG setting), 8 bits


def _bpg_encode(image, qp):
  from PIL import Image

  with tempfile.TemporaryDirectory() as folder:
    source, target = os.path.join(folder, "in.png"), os.path.join(folder, "out.bpg")
    Image.fromarray(image).save(source)
    _run_binary(["bpgenc", "-o", target, "-q", str(int(qp)), *BPG_OPTIONS, source])
    return pathlib.Path(target).read_bytes()


def _bpg_decode(data):
  with tempfile.TemporaryDirectory() as folder:
    source, target = os.path.join(folder, "in.bpg"), os.path.join(folder, "out.png")
    pathlib.Path(source).write_bytes(data)
    _run_binary(["bpgdec", "-o", target, source])
    return decode_with_pillow(pathlib.Path(target).read_bytes())


def _vtm_missing():
  return _binaries_missing("EncoderApp", "DecoderApp") or (
    "VTM needs a YCbCr conversion and an encoder config: not implemented yet "
    "(the analysis has the published `vtm` curve)"
  )


def _not_implemented(image, value=None):
  raise ClassicalError("vtm: not implemented")


BPG = Codec(
  "bpg",
  "BPG",
  "QP",
  (0, 51),
  f"bpgenc -q QP {' '.join(BPG_OPTIONS)} (its default HEVC encoder, x265); PNG in and out",
  _bpg_encode,
  _bpg_decode,
  lambda: _binaries_missing("bpgenc", "bpgdec"),
  lambda: f"bpgenc at {shutil.which('bpgenc')}",
)
VTM = Codec("vtm", "VTM", "QP", (0, 63), "", _not_implemented, _not_implemented, _vtm_missing, str)
CODECS = {
  **{name: _pillow_codec(name, *spec) for name, spec in PILLOW.items()},
  BPG.name: BPG,
  VTM.name: VTM,
}


def select(names):
  """-> (the codecs among ``names`` that can run here, a note per one that cannot). An unknown
  name is an error; one that cannot run (no Pillow support, no plugin, no binary) is a note."""
  unknown = [name for name in names if name not in CODECS]
  if unknown:
    raise ClassicalError(f"unknown classical codec(s) {unknown}; known: {', '.join(CODECS)}")
  usable, notes = [], []
  for name in dict.fromkeys(names):
    why = CODECS[name].missing()
    if why:
      notes.append(f"{name}: {why}: skipped")
    else:
      usable.append(CODECS[name])
  return usable, notes


def check_grid(codec, values):
  """The grid values of one codec as floats, each inside its bounds."""
  if not values:
    raise ClassicalError(f"{codec.name}: empty quality grid")
  low, high = codec.bounds
  bad = [v for v in values if not isinstance(v, (int, float)) or not low <= v <= high]
  if bad:
    raise ClassicalError(
      f"{codec.name}: grid value(s) {bad} outside [{low:g}, {high:g}] ({codec.quality})"
    )
  return [float(v) for v in values]


def code_image(codec, image, value):
  """One image through one codec at one grid value: the encoded bytes are decoded back and
  measured with cbexp's metrics. -> the measured part of a per-image row."""
  height, width = image.shape[:2]
  start = time.perf_counter()
  data = codec.encode(image, value)
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  decoded = codec.decode(data)
  decode_s = time.perf_counter() - start
  if decoded.shape != image.shape:
    raise ClassicalError(f"{codec.name}: decoded {decoded.shape}, expected {image.shape}")
  ms_ssim = metrics.ms_ssim(image, decoded)
  return {
    "height": height,
    "width": width,
    "bytes": len(data),
    "bpp": metrics.bits_per_pixel(len(data), height, width),
    "psnr": metrics.psnr(image, decoded),
    "ms_ssim": ms_ssim,
    "ms_ssim_db": metrics.ms_ssim_db(ms_ssim),
    "encode_s": encode_s,
    "decode_s": decode_s,
  }


def _code_or_fail(codec, image, value, name):
  """``code_image``; a codec's own failure (Pillow's OSError/ValueError, a binary's exit
  status) becomes CodingFailed, naming the codec, the grid value and the image."""
  try:
    return code_image(codec, image, value)
  except (OSError, ValueError, subprocess.SubprocessError) as error:
    why = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise CodingFailed(f"{codec.name} at {value:g} failed on {name}: {why}") from None


def file_digest(path):
  """The first 16 hex digits of the SHA-256 of an image file: a cached row names its image by
  content, not by path."""
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


def read_per_image(path):
  """An earlier per-image table (the cache), or None where there is none. Digests and names
  stay text (a digest of digits only must not become a number)."""
  path = pathlib.Path(path)
  if not path.is_file():
    return None
  text = {column: str for column in ("codec", "image", "digest", "encoder")}
  return pd.read_csv(path, dtype=text)


def _cached_rows(cached):
  """{key: row} of an earlier per-image table (None or empty: nothing cached)."""
  if cached is None or cached.empty or not set(KEY) <= set(cached.columns):
    return {}
  return {tuple(row[k] for k in KEY): row for row in cached.to_dict("records")}


def evaluate(paths, codecs, grids, cached=None, progress=None):
  """Every image of ``paths`` through every codec (``select``) at every value of its grid
  (``grids``: {name: [values]}). Rows of ``cached`` (an earlier per-image table) with the same
  codec, value, image content and encoder are reused, not recomputed.
  ``progress(codec, computed, reused)`` after each codec. -> per-image DataFrame (COLUMNS)."""
  from cbexp.images import load_image

  reuse, rows = _cached_rows(cached), []
  images = [(os.path.basename(str(p)), file_digest(p), p) for p in paths]
  for codec in codecs:
    encoder = f"{codec.settings}; {codec.library()}"
    computed = reused = 0
    for name, digest, path in images:
      image = None
      for value in check_grid(codec, grids[codec.name]):
        row = reuse.get((codec.name, value, digest, encoder))
        if row is None:
          image = load_image(path) if image is None else image
          row = {"codec": codec.name, "quality": value, "digest": digest, "encoder": encoder}
          row.update(_code_or_fail(codec, image, value, name))
          computed += 1
        else:
          reused += 1
        rows.append({**row, "image": name})
    if progress:
      progress(codec, computed, reused)
  return pd.DataFrame(rows, columns=list(COLUMNS))


def per_quality(per_image):
  """One row per (codec, grid value): the set's numbers as ``evaluate.summarize`` gives them for
  cbexp's models (means over images; MS-SSIM dB of the mean MS-SSIM; median and mean times)."""
  rows = []
  table = per_image.assign(bpp_estimated=np.nan)
  for (name, value), group in table.groupby(["codec", "quality"], sort=False):
    summary = summarize(group)
    del summary["bpp_estimated"]
    rows.append({"codec": name, "label": CODECS[name].label, "quality": value, **summary})
  order = {name: i for i, name in enumerate(dict.fromkeys(per_image["codec"]))}  # as selected
  by = lambda column: column.map(order) if column.name == "codec" else column
  return pd.DataFrame(rows).sort_values(["codec", "bpp"], key=by, ignore_index=True)


def grids(names, overrides=None):
  """{codec: grid}: ``overrides`` where it names the codec, else conf/classical.yaml's grid."""
  from omegaconf import OmegaConf

  from cbexp.config import CONF_DIR

  defaults = OmegaConf.load(CONF_DIR / "classical.yaml").qualities
  overrides = overrides or {}
  chosen = {}
  for name in names:
    values = overrides.get(name)
    values = defaults.get(name) if values is None else values
    chosen[name] = list(values) if values is not None else []
  return chosen


def image_paths(images, max_images=0):
  """The image files of ``images``: a folder or glob, or the name of an evaluation set
  (conf/eval/<name>.yaml: kodak, kodak_test, default); the first ``max_images`` (0: all)."""
  from omegaconf import OmegaConf

  from cbexp.config import CONF_DIR
  from cbexp.images import config_image_paths, list_images

  if not images:
    raise ClassicalError("images is not set: a folder, a glob or an evaluation set (kodak, ...)")
  preset = CONF_DIR / "eval" / f"{images}.yaml"
  if "/" not in str(images) and preset.is_file():
    spec = OmegaConf.to_container(OmegaConf.load(preset), resolve=True)
    paths = config_image_paths(spec["source"], spec["path"], "eval", spec.get("files"))
  else:
    paths = list_images(images)
  return paths[:max_images] if max_images else paths
