"""The codec runtime: a ``Codec`` codes uint8 images to ``Bitstream`` (.cbx) and back with an
export's functions, refusing files another model wrote, sizes above the limits (checked from
headers, before anything large is allocated) and decodes whose symbol checks differ.
Importing it does not load TensorFlow: commands check their inputs first.
"""

import numpy as np

from cbexp.codec import savedmodel
from cbexp.codec.bitstream import Bitstream
from cbexp.constants import PAD_MULTIPLE, padded_size
from cbexp.errors import CbexpError

# The largest image coded by default, counted padded (2^26: 67 MP). The transforms run in tiles
# (cbexp.models.tiling), but the latents are whole, so memory still grows with the pixels,
# slowly: --max-pixels raises the limit on a machine that has the memory.
DEFAULT_MAX_PIXELS = 2**26
DECODED_SUFFIXES = (".png",)  # lossless only: the decoded image must be stored exactly
# At most this many bytes of strings per coded pixel (128 bits, far above any real stream): a
# header announcing more is refused before the strings are read.
MAX_BYTES_PER_PIXEL = 16
# Decoding that takes longer than this is stopped (tfc's range decoder can loop forever on some
# crafted strings); the limit is far above a real decode of that size.
DECODE_TIMEOUT_BASE_S = 60.0
DECODE_TIMEOUT_PER_PIXEL_S = 50e-6
STRINGS_REFUSED = (
  "the strings are corrupt or were not written by this model, or the decoder's "
  "numeric environment differs from the encoder's (thread count, oneDNN, "
  "instruction set, GPU: decode on the encoder's kind of machine, or encode with "
  "an entropy.numerics=exact model)"
)


class CodecError(CbexpError, ValueError):
  """A model/file/image combination the codec refuses; the message says why."""


def check_size(height, width, max_pixels, multiple=PAD_MULTIPLE, what="image"):
  """Refuses an image whose *padded* size (what the model allocates for) is above the limit."""
  if height < 1 or width < 1:
    raise CodecError(f"{what} of {width}x{height} pixels: nothing to code")
  coded_height, coded_width = padded_size(height, multiple), padded_size(width, multiple)
  pixels = coded_height * coded_width
  if pixels > max_pixels:
    raise CodecError(
      f"{what} of {width}x{height} pixels, coded as {coded_width}x{coded_height} = "
      f"{pixels} pixels (padded to a multiple of {multiple}), is above the limit "
      f"of {max_pixels} pixels (raise it with --max-pixels if the machine has the "
      "memory)"
    )
  return pixels


def check_header(header, max_pixels):
  """For ``bitstream.read``: refuses, before the strings are read, a file whose header announces
  an image above the pixel limit or more bytes than such an image can need."""
  pixels = check_size(header.height, header.width, max_pixels, what="the header announces an image")
  most = MAX_BYTES_PER_PIXEL * pixels
  if sum(header.lengths) > most:
    raise CodecError(
      f"the header announces {sum(header.lengths)} bytes of strings for "
      f"{header.width}x{header.height} pixels, more than any stream can need "
      f"({most} bytes, {MAX_BYTES_PER_PIXEL} per coded pixel)"
    )


def decode_timeout(height, width, seconds=None):
  """The decoding deadline in seconds (None: the default for this size; 0: none)."""
  if seconds is None:
    pixels = padded_size(height) * padded_size(width)
    return DECODE_TIMEOUT_BASE_S + DECODE_TIMEOUT_PER_PIXEL_S * pixels
  return seconds or None


class Codec:
  """A model ready to code images: ``encode(uint8 [H, W, 3]) -> Bitstream`` and back."""

  def __init__(self, module, source, max_pixels=DEFAULT_MAX_PIXELS, decompress_format2=None):
    self.module = module
    self.source = str(source)
    self.max_pixels = int(max_pixels)
    self.entropy_model = module.entropy_model.numpy().decode()
    self.fingerprint = module.fingerprint.numpy().decode()
    self.num_strings = int(module.num_strings.numpy())
    self.pad_multiple = int(module.pad_multiple.numpy())
    # Exports of format 2 predate the symbol checks (cbexp.export): they decode .cbx format 1.
    # Format 3 computes the checks of .cbx format 2, format 4 those of .cbx format 3.
    export_format = int(module.format_version.numpy())
    self.symbol_checks = export_format >= 3
    self.check_format = 3 if export_format >= 4 else 2
    # A model directory's codec also decodes files with format 2 checks (whole latent).
    self.decompress_format2 = decompress_format2

  @classmethod
  def from_model(cls, model, cfg, source="memory", max_pixels=DEFAULT_MAX_PIXELS):
    """An in-memory codec over a model with its coders built: the functions an export of it
    would store (``savedmodel.build_codec_functions``), so the same strings; it also decodes
    .cbx files of format 2 (``CompressionModel.decompress_padded_format2``)."""
    import tensorflow as tf

    from cbexp.models.compression import crop, padded_shape

    @tf.function(
      input_signature=[
        tf.TensorSpec([1 + model.entropy_model.num_strings], tf.string),
        tf.TensorSpec([2], tf.int32),
      ]
    )
    def decompress_format2(strings, image_shape):
      x_hat, _, checks = model.decompress_padded_format2(strings, padded_shape(image_shape))
      return {"image": crop(x_hat, image_shape), "checks": checks}

    module = savedmodel.build_codec_functions(model, cfg)
    return cls(module, source, max_pixels, decompress_format2)

  def __repr__(self):
    return f"Codec({self.entropy_model}, fingerprint {self.fingerprint}, from {self.source})"

  def check_image(self, image):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise CodecError(
        f"expected a uint8 RGB image [height, width, 3], got {image.dtype} {list(image.shape)}"
      )
    self.check_size(image.shape[0], image.shape[1])
    return image

  def check_size(self, height, width):
    check_size(height, width, self.max_pixels, self.pad_multiple)

  def _refuse_old_export(self, what):
    raise CodecError(
      f"{self.source}: this export (format 2) predates the symbol checks of .cbx "
      f"format 2 and cannot {what}; export the model again (cbexp export --from "
      "MODEL --out DIR) or use its model directory"
    )

  def encode(self, image):
    """-> Bitstream with the strings and their symbol checks (written as .cbx format 3, or 2 by
    an export of format 3)."""
    image = self.check_image(image)
    if not self.symbol_checks:
      self._refuse_old_export("write them")
    coded = self.module.compress(image_tensor(image))
    return Bitstream(
      entropy_model=self.entropy_model,
      fingerprint=self.fingerprint,
      height=image.shape[0],
      width=image.shape[1],
      strings=tuple(coded["strings"].numpy()),
      checks=tuple(bytes(c) for c in coded["checks"].numpy()),
      check_format=self.check_format,
    )

  def check_compatible(self, bitstream):
    """Refuses a stream this model did not write: decoding it would give a wrong image."""
    if bitstream.entropy_model != self.entropy_model:
      raise CodecError(
        f"model mismatch: the file was coded with entropy model '{bitstream.entropy_model}' "
        f"(fingerprint {bitstream.fingerprint}), this model is '{self.entropy_model}' "
        f"(fingerprint {self.fingerprint}); decode with the model that encoded it"
      )
    if bitstream.fingerprint != self.fingerprint:
      raise CodecError(
        f"model mismatch: the file was coded by a '{bitstream.entropy_model}' model with "
        f"fingerprint {bitstream.fingerprint}, this '{self.entropy_model}' model has "
        f"fingerprint {self.fingerprint} (other weights or config); decode with the model "
        "that encoded it"
      )
    if len(bitstream.strings) != self.num_strings:
      raise CodecError(
        f"the file has {len(bitstream.strings)} strings, the "
        f"'{self.entropy_model}' model codes {self.num_strings}"
      )
    self.check_size(bitstream.height, bitstream.width)

  def prepare(self, bitstream=None):
    """Traces the function that ``encode`` (or, given ``bitstream``, ``decode``) will run,
    without running it, so that a process can give back what tracing freed before the coding
    starts (``cbexp.cli.common.release_freed_memory``)."""
    function = self.module.compress if bitstream is None else self._decompress_for(bitstream)
    function.get_concrete_function()

  def decode(self, bitstream):
    """-> uint8 [H, W, 3]. Strings that fail verification (or that tfc's range decoder
    rejects: its sanity check) raise CodecError(STRINGS_REFUSED); symbol checks that differ
    from the file's raise CodecError naming the string (``compare_symbol_checks``)."""
    import tensorflow as tf

    from cbexp.models.compression import symbol_check_mismatch

    self.check_compatible(bitstream)
    if bitstream.checks is not None and not self.symbol_checks:
      self._refuse_old_export("check the symbols of a .cbx file of format 2")
    try:
      decoded = self._decompress_for(bitstream)(
        tf.constant(bitstream.strings, tf.string),
        tf.constant([bitstream.height, bitstream.width], tf.int32),
      )
    except tf.errors.InvalidArgumentError:  # verify_strings, or tfc's "Sanity check failed."
      raise CodecError(f"cannot decode: {STRINGS_REFUSED}") from None
    if not self.symbol_checks:
      return decoded.numpy()
    if bitstream.checks is not None:
      mismatch = symbol_check_mismatch(
        bitstream.checks, [bytes(c) for c in decoded["checks"].numpy()]
      )
      if mismatch:
        raise CodecError(f"cannot decode: {mismatch}")
    return decoded["image"].numpy()

  def _decompress_for(self, bitstream):
    """The decoder that computes the symbol checks of the file's format."""
    if bitstream.checks is None or bitstream.check_format == self.check_format:
      return self.module.decompress
    if bitstream.check_format == 2 and self.decompress_format2 is not None:
      return self.decompress_format2
    if bitstream.check_format == 2:
      raise CodecError(
        f"{self.source}: this export checks the symbols of .cbx format 3; the file is of "
        "format 2 (written before it): decode it with the model directory"
      )
    raise CodecError(
      f"{self.source}: this export (format 3) checks the symbols of .cbx format 2; the file is "
      "of format 3: export the model again (cbexp export --from MODEL --out DIR) or use its "
      "model directory"
    )

  def encoder_reconstruction(self, image):
    """The image the decoder will produce, computed on the encoder's side."""
    import tensorflow as tf

    return self.module.encoder_reconstruction(tf.constant(self.check_image(image))).numpy()


# --- images --------------------------------------------------------------------------------
def image_tensor(image):
  """A uint8 image array as a tensor, sharing its memory when the array is C-contiguous,
  writeable and starts on a ``TENSOR_ALIGNMENT`` boundary (as ``images.load_image`` and
  ``aligned_empty`` give it; TensorFlow aborts the process on unaligned shared memory), a copy
  otherwise: at the pixel limit a copy is 200 MB of the coding's peak."""
  import tensorflow as tf

  from cbexp.images import TENSOR_ALIGNMENT

  flags = image.flags  # DLPack cannot export a read-only array
  if flags.c_contiguous and flags.writeable and image.ctypes.data % TENSOR_ALIGNMENT == 0:
    return tf.experimental.dlpack.from_dlpack(image.__dlpack__())
  return tf.constant(image)


def describe_image_file(path, max_pixels):
  """Reads an image file's header only: -> (width, height, mode), ``mode`` being Pillow's with
  ";16" added for 16-bit-per-channel colour (e.g. 48-bit RGB PNG: "RGB;16"). Refuses images
  whose padded size is above the pixel limit before their pixels are decoded (Pillow's own
  limit does not apply here: ours is checked instead; load_image(path, max_pixels) decodes)."""
  from PIL import Image

  from cbexp.images import (
    DataError,
    check_image,
    check_image_path,
    load_image,
    pillow_pixel_limit,
  )

  path = check_image_path(path)
  try:
    with pillow_pixel_limit(None), Image.open(path) as image:  # lazy: the header only
      check_image(image, path)
      width, height = image.size
      mode = image.mode
      if _sixteen_bit_colour(image):
        mode += ";16"
  except DataError:
    raise
  except Exception:  # noqa: BLE001 - load_image names the problem (not an image, unreadable)
    load_image(path, max_pixels)
    raise DataError(f"{path}: not a readable image") from None
  try:
    check_size(height, width, max_pixels)
  except CodecError as error:
    raise CodecError(f"{path}: {error}") from None
  return width, height, mode


def _sixteen_bit_colour(image):
  """Whether the file stores colour (or gray + alpha) samples in 16 bits, which Pillow reads as
  8-bit (its raw mode says so, e.g. "RGB;16B" for a 48-bit PNG)."""
  if image.mode.startswith("I") or image.mode == "F":
    return False  # 16/32-bit grayscale: a mode of its own
  for tile in getattr(image, "tile", None) or ():
    args = tile[3] if len(tile) > 3 else None
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    if isinstance(rawmode, str) and ";16" in rawmode:
      return True
  return False


def conversion_note(mode):
  """How ``cbexp.data.load_image`` turns a Pillow mode into RGB (said on the command line)."""
  if mode == "RGB":
    return ""
  if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
    return f" (converted from {mode} to RGB)"
  if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    return f" (converted from {mode} to RGB: alpha dropped)"
  if mode.startswith("I") or mode == "F":
    return f" (converted from {mode}, 16-bit grayscale, to 8-bit RGB)"
  if mode.endswith(";16"):  # describe_image_file: 16 bits per channel
    base = mode[: -len(";16")]
    alpha = ": alpha dropped" if "A" in base else ""
    return f" (converted from 16-bit {base} to 8-bit RGB{alpha})"
  return f" (converted from {mode} to RGB)"


def encode_png(image):
  import io

  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buffer, format="PNG")
  return buffer.getvalue()
