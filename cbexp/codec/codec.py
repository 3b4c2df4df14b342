"""The image codec: compress an image to a ``.cbx`` file and back, with an exported or trained model.

    python -m cbexp.codec compress   --model MODEL in.png out.cbx
    python -m cbexp.codec decompress --model MODEL in.cbx out.png
    python -m cbexp.codec eval       --model MODEL FOLDER [--csv per_image.csv]

MODEL is an export (``python -m cbexp.export``: a SavedModel folder), a model directory
(config.yaml + weights/) or ``runs:/<mlflow run id>``. All three give the same strings for the
same weights: a model directory is wrapped in the very functions an export stores.

Decoding checks that the file was made by this model (entropy-model name and fingerprint of
config + weights + range-coding tables) and refuses otherwise; the strings themselves are
verified while they are decoded (cbexp.entropy.base.verify_strings), and the decoder's symbol
check of each string (its scale indexes and symbols, cbexp.bitstream) must equal the one the
encoder stored in the file: a decoder whose numeric environment differs from the encoder's (other
thread count, oneDNN, instruction set, GPU) can otherwise lose sync without an error and write a
wrong image. Files of .cbx format 1 (no checks) decode as before. Sizes are checked from
headers before anything large is allocated or the model loads: the pixel limit counts the
*padded* image (a multiple of 64 per side), and a .cbx file may not hold more than
MAX_BYTES_PER_PIXEL bytes per coded pixel. Errors end the command with one line on stderr and a
non-zero exit; no output file is left behind (outputs are written beside their final name and
renamed at the end) and an existing one is kept unless --force is given. Set CBEXP_DEBUG=1 to
get tracebacks instead.
"""
import argparse
import os
import pathlib
import sys
import threading
import time

import numpy as np

from cbexp import files
from cbexp.codec.bitstream import Bitstream, bits_per_pixel
from cbexp.cli.common import one_line_parser, run_argparse_cli


# The largest image coded by default: 2**24 pixels (e.g. 4096 x 4096). Measured with the paper
# ChARM model (peak RSS, 768x512 vs 1536x1024): decoding needs about 1.9 KB per pixel on top of
# ~1.5 GB for the model, encoding about 0.8 KB, so this limit already means ~32 GB to decode.
# --max-pixels raises it on a machine that has the memory.
DEFAULT_MAX_PIXELS = 2**24
DECODED_SUFFIXES = (".png",)  # lossless only: the decoded image must be stored exactly
# cbexp.model.PAD_MULTIPLE (a test checks), known here before TensorFlow loads.
PAD_MULTIPLE = 64
# At most this many bytes of strings per coded (padded) pixel: 128 bits, about 5x an
# uncompressed 24-bit image and far above any real stream (tfc's worst case per latent element,
# an escaped 31-bit value, is ~80 bits; the paper model has 1.3 elements per pixel). A header
# announcing more is refused before the strings are read.
MAX_BYTES_PER_PIXEL = 16
# Decoding that takes longer than this is stopped (tfc's range decoder can loop forever on some
# crafted strings): a minute plus 50 us per coded pixel, ~8x the paper ChARM model's decoding
# time on a 2-CPU machine; --decode-timeout changes it.
DECODE_TIMEOUT_BASE_S = 60.
DECODE_TIMEOUT_PER_PIXEL_S = 50e-6
STRINGS_REFUSED = ("the strings are corrupt or were not written by this model, or the decoder's "
                   "numeric environment differs from the encoder's (thread count, oneDNN, "
                   "instruction set, GPU: decode on the encoder's kind of machine, or encode with "
                   "an entropy.numerics=exact model)")


class CodecError(ValueError):
  """A model/file/image combination the codec refuses; the message says why."""


def padded_size(n, multiple=PAD_MULTIPLE):
  return -(-n // multiple) * multiple


def check_size(height, width, max_pixels, multiple=PAD_MULTIPLE, what="image"):
  """Refuses an image whose *padded* size (what the model allocates for) is above the limit."""
  if height < 1 or width < 1:
    raise CodecError(f"{what} of {width}x{height} pixels: nothing to code")
  coded_height, coded_width = padded_size(height, multiple), padded_size(width, multiple)
  pixels = coded_height * coded_width
  if pixels > max_pixels:
    raise CodecError(f"{what} of {width}x{height} pixels, coded as {coded_width}x{coded_height} = "
                     f"{pixels} pixels (padded to a multiple of {multiple}), is above the limit "
                     f"of {max_pixels} pixels (raise it with --max-pixels if the machine has the "
                     "memory)")
  return pixels


def check_header(header, max_pixels):
  """For ``bitstream.read``: refuses, before the strings are read, a file whose header announces
  an image above the pixel limit or more bytes than such an image can need."""
  pixels = check_size(header.height, header.width, max_pixels,
                      what="the header announces an image")
  most = MAX_BYTES_PER_PIXEL * pixels
  if sum(header.lengths) > most:
    raise CodecError(f"the header announces {sum(header.lengths)} bytes of strings for "
                     f"{header.width}x{header.height} pixels, more than any stream can need "
                     f"({most} bytes, {MAX_BYTES_PER_PIXEL} per coded pixel)")


class Codec:
  """A model ready to code images: ``encode(uint8 [H, W, 3]) -> Bitstream`` and back."""

  def __init__(self, module, source, max_pixels=DEFAULT_MAX_PIXELS):
    self.module = module
    self.source = str(source)
    self.max_pixels = int(max_pixels)
    self.entropy_model = module.entropy_model.numpy().decode()
    self.fingerprint = module.fingerprint.numpy().decode()
    self.num_strings = int(module.num_strings.numpy())
    self.pad_multiple = int(module.pad_multiple.numpy())
    # Exports of format 2 predate the symbol checks (cbexp.export): they decode .cbx format 1.
    self.symbol_checks = int(module.format_version.numpy()) >= 3

  def __repr__(self):
    return f"Codec({self.entropy_model}, fingerprint {self.fingerprint}, from {self.source})"

  def check_image(self, image):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise CodecError(f"expected a uint8 RGB image [height, width, 3], got {image.dtype} "
                       f"{list(image.shape)}")
    self.check_size(image.shape[0], image.shape[1])
    return image

  def check_size(self, height, width):
    check_size(height, width, self.max_pixels, self.pad_multiple)

  def _refuse_old_export(self, what):
    raise CodecError(f"{self.source}: this export (format 2) predates the symbol checks of .cbx "
                     f"format 2 and cannot {what}; export the model again (python -m "
                     "cbexp.export --from MODEL) or use its model directory")

  def encode(self, image):
    """-> Bitstream with the strings and their symbol checks (written as .cbx format 2)."""
    import tensorflow as tf
    image = self.check_image(image)
    if not self.symbol_checks:
      self._refuse_old_export("write them")
    coded = self.module.compress(tf.constant(image))
    return Bitstream(entropy_model=self.entropy_model, fingerprint=self.fingerprint,
                     height=image.shape[0], width=image.shape[1],
                     strings=tuple(coded["strings"].numpy()),
                     checks=tuple(bytes(c) for c in coded["checks"].numpy()))

  def check_compatible(self, bitstream):
    """Refuses a stream this model did not write: decoding it would give a wrong image."""
    if bitstream.entropy_model != self.entropy_model:
      raise CodecError(
          f"model mismatch: the file was coded with entropy model '{bitstream.entropy_model}' "
          f"(fingerprint {bitstream.fingerprint}), this model is '{self.entropy_model}' "
          f"(fingerprint {self.fingerprint}); decode with the model that encoded it")
    if bitstream.fingerprint != self.fingerprint:
      raise CodecError(
          f"model mismatch: the file was coded by a '{bitstream.entropy_model}' model with "
          f"fingerprint {bitstream.fingerprint}, this '{self.entropy_model}' model has "
          f"fingerprint {self.fingerprint} (other weights or config); decode with the model "
          "that encoded it")
    if len(bitstream.strings) != self.num_strings:
      raise CodecError(f"the file has {len(bitstream.strings)} strings, the "
                       f"'{self.entropy_model}' model codes {self.num_strings}")
    self.check_size(bitstream.height, bitstream.width)

  def decode(self, bitstream):
    """-> uint8 [H, W, 3]. Strings that fail verification (or that tfc's range decoder
    rejects: its sanity check) raise CodecError(STRINGS_REFUSED); symbol checks that differ
    from the file's raise CodecError naming the string (``compare_symbol_checks``)."""
    import tensorflow as tf
    from cbexp.codec.bitstream import SymbolCheckError, compare_symbol_checks
    self.check_compatible(bitstream)
    if bitstream.checks is not None and not self.symbol_checks:
      self._refuse_old_export("check the symbols of a .cbx file of format 2")
    try:
      decoded = self.module.decompress(tf.constant(bitstream.strings, tf.string),
                                       tf.constant([bitstream.height, bitstream.width], tf.int32))
    except tf.errors.InvalidArgumentError:  # verify_strings, or tfc's "Sanity check failed."
      raise CodecError(f"cannot decode: {STRINGS_REFUSED}") from None
    if not self.symbol_checks:
      return decoded.numpy()
    if bitstream.checks is not None:
      try:
        compare_symbol_checks(bitstream.checks, [bytes(c) for c in decoded["checks"].numpy()])
      except SymbolCheckError as error:
        raise CodecError(f"cannot decode: {error}") from None
    return decoded["image"].numpy()

  def encoder_reconstruction(self, image):
    """The image the decoder will produce, computed on the encoder's side."""
    import tensorflow as tf
    return self.module.encoder_reconstruction(tf.constant(self.check_image(image))).numpy()


def check_model_path(spec):
  """Fails fast (before TensorFlow loads) on a model path that cannot be a model."""
  spec = str(spec)
  if spec.startswith(("runs:/", "models:/")):
    return
  path = pathlib.Path(spec)
  if not path.exists():
    raise CodecError(f"{spec}: no such model (expected an export folder, a model directory or "
                     "runs:/<run id>)")
  if not path.is_dir() or not ((path / "saved_model.pb").is_file()
                               or (path / "config.yaml").is_file()):
    raise CodecError(f"{spec}: not a model (expected an export folder with saved_model.pb or a "
                     "model directory with config.yaml)")


def load_codec(spec, tracking_uri=None, max_pixels=DEFAULT_MAX_PIXELS, precision=None,
               numerics=None):
  """An export folder, a model directory or ``runs:/<run id>`` -> ``Codec``. ``precision``:
  the decoding precision (cbexp.precision; None: the export's, or float32); an export's is
  fixed when it is exported."""
  from cbexp.codec import savedmodel as export
  from cbexp.models.precision import check_precision
  check_model_path(spec)
  if precision is not None:
    check_precision(precision)
  if export.is_saved_model(spec):
    module = export.load(spec)
    exported = module.decode_precision.numpy().decode()
    if precision is not None and precision != exported:
      raise CodecError(f"{spec}: this export decodes in {exported}; --precision {precision} "
                       f"needs a new export (python -m cbexp.export --precision {precision}) "
                       f"or the model directory")
    if numerics is not None:
      import json
      exported = json.loads(module.config_json.numpy()).get("entropy", {}).get("numerics",
                                                                             "float")
      if numerics != exported:
        raise CodecError(f"{spec}: this export codes with {exported} numerics; --numerics "
                         f"{numerics} needs a new export (python -m cbexp.export --numerics "
                         f"{numerics}) or the model directory")
  else:
    model, cfg = export.load_trained(spec, tracking_uri, numerics)
    model.set_decode_precision(precision or "float32")
    module = export.codec_module(model, cfg)
  return Codec(module, spec, max_pixels)


# --- images --------------------------------------------------------------------------------
def describe_image_file(path, max_pixels):
  """Reads an image file's header only: -> (width, height, mode), ``mode`` being Pillow's with
  ";16" added for 16-bit-per-channel colour (e.g. 48-bit RGB PNG: "RGB;16"). Refuses images
  whose padded size is above the pixel limit before their pixels are decoded (Pillow's own
  limit does not apply here: ours is checked instead; load_image(path, max_pixels) decodes)."""
  from PIL import Image
  from cbexp.images import DataError, check_image_path, load_image, pillow_pixel_limit
  path = check_image_path(path)
  try:
    with pillow_pixel_limit(None), Image.open(path) as image:  # lazy: the header only
      width, height = image.size
      mode = image.mode
      if _sixteen_bit_colour(image):
        mode += ";16"
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
    return f" (converted from {mode}, 16/32-bit grayscale, to 8-bit RGB)"
  if mode.endswith(";16"):  # describe_image_file: 16 bits per channel
    base = mode[:-len(";16")]
    alpha = ": alpha dropped" if "A" in base else ""
    return f" (converted from 16-bit {base} to 8-bit RGB{alpha})"
  return f" (converted from {mode} to RGB)"


def encode_png(image):
  import io
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buffer, format="PNG")
  return buffer.getvalue()


_ROW = "{:<16} {:>9} {:>8} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9}"


def _format_row(r):
  return _ROW.format(r["image"], f"{r['width']}x{r['height']}", r["bytes"], f"{r['bpp']:.4f}",
                     f"{r['psnr']:.3f}", f"{r['ms_ssim']:.5f}", f"{r['ms_ssim_db']:.3f}",
                     f"{r['encode_s']:.3f}", f"{r['decode_s']:.3f}")


# --- command line (one-line errors: cbexp.cli) ---------------------------------------------
def _add_model_arguments(parser):
  parser.add_argument("--model", required=True,
                      help="an export folder, a model directory, runs:/<mlflow run id> or "
                           "models:/<registered name>/<version>")
  parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ (default: "
                      "$MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
  parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="refuse larger images, counted once padded to a multiple of "
                           f"{PAD_MULTIPLE} per side (default {DEFAULT_MAX_PIXELS}); also "
                           "Pillow's decompression-bomb limit")
  parser.add_argument("--precision", choices=("float32", "bfloat16"),  # cbexp.precision
                      help="decoding precision: float32 (the reference) or bfloat16 (synthesis "
                           "and, where safe, LRP; same streams, slightly different images; "
                           "default: the export's, float32 for model directories)")
  parser.add_argument("--numerics", choices=("float", "exact"),
                      help="entropy-parameter numerics (cbexp.entropy.exact): exact decodes the "
                           "same on every machine; the encoder and decoder must use the same "
                           "(default: the model's own)")


def _add_force_argument(parser, what="the output file"):
  parser.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists")


def _check_output(path, suffixes=None, force=False):
  path = pathlib.Path(path)
  if suffixes and path.suffix.lower() not in suffixes:
    raise CodecError(f"{path}: the output name must end in {' or '.join(suffixes)}")
  if not path.parent.is_dir():
    raise CodecError(f"{path}: output folder {path.parent} does not exist")
  if path.is_dir():
    raise CodecError(f"{path}: is a folder, expected a file name")
  if path.exists() and not force:
    raise CodecError(f"{path}: already exists; pass --force to overwrite it")
  return path


def decode_timeout(height, width, seconds=None):
  """The decoding deadline in seconds (None: the default for this size; 0: none)."""
  if seconds is None:
    pixels = padded_size(height) * padded_size(width)
    return DECODE_TIMEOUT_BASE_S + DECODE_TIMEOUT_PER_PIXEL_S * pixels
  return seconds or None


def _watchdog(seconds, prog):
  """Ends the process with one line on stderr if it is still running after ``seconds`` (the
  caller cancels it). tfc's range decoder can loop forever in C++ on crafted strings, out of
  reach of Python exceptions, so the process itself ends (no output has been written yet)."""
  def expire():
    sys.stderr.write(f"{prog}: error: decoding did not finish within {seconds:.0f} s: "
                     f"{STRINGS_REFUSED} (--decode-timeout changes the limit)\n")
    sys.stderr.flush()
    os._exit(1)
  timer = threading.Timer(seconds, expire)
  timer.daemon = True
  if seconds:
    timer.start()
  return timer


def _check_not_same(input_path, output):
  if pathlib.Path(input_path).resolve() == output.resolve():
    raise CodecError(f"{output}: the output would overwrite the input")


def compress_command(args):
  from cbexp.codec import bitstream
  from cbexp.images import load_image
  output = _check_output(args.output, (".cbx",), args.force)
  _check_not_same(args.input, output)
  check_model_path(args.model)
  _, _, mode = describe_image_file(args.input, args.max_pixels)  # before the model loads
  codec = load_codec(args.model, args.tracking_uri, args.max_pixels, args.precision,
                     getattr(args, "numerics", None))
  image = load_image(args.input, args.max_pixels)
  height, width = image.shape[:2]  # upright (EXIF orientation applied)
  start = time.perf_counter()
  stream = codec.encode(image)
  elapsed = time.perf_counter() - start
  size = bitstream.write(output, stream)
  print(f"{args.input} -> {output}: {width}x{height} pixels{conversion_note(mode)}, "
        f"{size} bytes, bpp {bits_per_pixel(size, height, width):.6f}, encode {elapsed:.3f} s")


def decompress_command(args):
  from cbexp.codec import bitstream
  output = _check_output(args.output, DECODED_SUFFIXES, args.force)
  _check_not_same(args.input, output)
  check_model_path(args.model)
  # The header is checked (pixel limit, string sizes against the file's) before the strings are
  # read, and the whole file before the model loads.
  stream, size = bitstream.read(args.input, lambda header: check_header(header, args.max_pixels))
  codec = load_codec(args.model, args.tracking_uri, args.max_pixels, args.precision,
                     getattr(args, "numerics", None))
  codec.check_compatible(stream)
  timer = _watchdog(decode_timeout(stream.height, stream.width, args.decode_timeout),
                    "python -m cbexp.codec")
  try:
    start = time.perf_counter()
    image = codec.decode(stream)
    elapsed = time.perf_counter() - start
  finally:
    timer.cancel()
  files.write_atomic(output, encode_png(image))
  print(f"{args.input} -> {output}: {stream.width}x{stream.height} pixels, {size} bytes, "
        f"bpp {bits_per_pixel(size, stream.height, stream.width):.6f}, decode {elapsed:.3f} s")


def eval_command(args):
  from cbexp.evaluation import evaluate
  from cbexp.images import list_images, pillow_pixel_limit
  check_model_path(args.model)
  paths = list_images(args.folder)
  if args.csv:
    csv_path = _check_output(args.csv, (".csv",), args.force)
  for path in paths:  # every image's size, from its header, before the model loads
    describe_image_file(path, args.max_pixels)
  codec = load_codec(args.model, args.tracking_uri, args.max_pixels, args.precision,
                     getattr(args, "numerics", None))
  print(f"{codec.entropy_model} model {codec.fingerprint} from {codec.source}: "
        f"{len(paths)} images, times in seconds after a warm-up per image shape")
  print(_ROW.format("image", "size", "bytes", "bpp", "psnr", "ms_ssim", "ms_ssim_db",
                    "encode_s", "decode_s"))
  with pillow_pixel_limit(args.max_pixels):
    per_image, s = evaluate.evaluate(codec, paths, warmup=not args.no_warmup,
                                     progress=lambda r: print(_format_row(r), flush=True))
  # The set's numbers as cbexp.evaluate defines them (MS-SSIM dB: of the mean MS-SSIM).
  print(_ROW.format("mean", "", "", f"{s['bpp']:.4f}", f"{s['psnr']:.3f}", f"{s['ms_ssim']:.5f}",
                    f"{s['ms_ssim_db']:.3f}", f"{s['encode_time_mean']:.3f}",
                    f"{s['decode_time_mean']:.3f}"))
  print(_ROW.format("median time", "", "", "", "", "", "", f"{s['encode_time_median']:.3f}",
                    f"{s['decode_time_median']:.3f}"))
  if args.csv:
    from cbexp.files import write_atomic
    table = per_image.drop(columns=["bpp_estimated"])  # no model estimate behind an export
    write_atomic(csv_path, table.to_csv(index=False).encode())
    print(f"per-image results written to {csv_path}")


def main(argv=None):
  parser = one_line_parser(
      prog="python -m cbexp.codec",
      description="Compress images to .cbx files and back with a cbexp model (an export, a model "
                  "directory, runs:/<id>). `<command> --help` lists each command's options.",
      epilog="examples:\n"
             "  python -m cbexp.codec compress --model outputs/runs/<run>/model kodim01.png a.cbx\n"
             "  python -m cbexp.codec decompress --model outputs/runs/<run>/model a.cbx a.png\n"
             "  python -m cbexp.codec eval --model runs:/<run id> $CBEXP_KODAK_DIR --csv t.csv",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  compress = commands.add_parser("compress", help="image (PNG, JPEG) -> .cbx")
  _add_model_arguments(compress)
  compress.add_argument("input")
  compress.add_argument("output")
  _add_force_argument(compress)
  compress.set_defaults(run=compress_command)
  decompress = commands.add_parser("decompress", help=".cbx -> PNG")
  _add_model_arguments(decompress)
  decompress.add_argument("input")
  decompress.add_argument("output")
  _add_force_argument(decompress)
  decompress.add_argument("--decode-timeout", type=float, metavar="SECONDS",
                          help="stop decoding after this long (default: "
                               f"{DECODE_TIMEOUT_BASE_S:.0f} s + "
                               f"{DECODE_TIMEOUT_PER_PIXEL_S * 1e6:.0f} us per coded pixel; "
                               "0: no limit)")
  decompress.set_defaults(run=decompress_command)
  evaluate_ = commands.add_parser("eval", help="bpp, PSNR, MS-SSIM and times over a folder")
  _add_model_arguments(evaluate_)
  evaluate_.add_argument("folder", help="a folder of images or a glob pattern")
  evaluate_.add_argument("--csv", help="also write the per-image table to this CSV file")
  evaluate_.add_argument("--no-warmup", action="store_true", help="time the first calls too")
  _add_force_argument(evaluate_, "the CSV file")
  evaluate_.set_defaults(run=eval_command)
  return run_argparse_cli(parser, lambda args: args.run(args), argv)


if __name__ == "__main__":
  raise SystemExit(main())
