"""The image codec: compress an image to a ``.cbx`` file and back, with an exported or trained model.

    python -m cbexp.codec compress   --model MODEL in.png out.cbx
    python -m cbexp.codec decompress --model MODEL in.cbx out.png
    python -m cbexp.codec eval       --model MODEL FOLDER [--csv per_image.csv]

MODEL is an export (``python -m cbexp.export``: a SavedModel folder), a model directory
(config.yaml + weights/) or ``runs:/<mlflow run id>``. All three give the same strings for the
same weights: a model directory is wrapped in the very functions an export stores.

Decoding checks that the file was made by this model (entropy-model name and fingerprint of
weights + config) and refuses otherwise. Errors end the command with one line on stderr and a
non-zero exit; no output file is left behind (outputs are written beside their final name and
renamed at the end). Set CBEXP_DEBUG=1 to get tracebacks instead.
"""
import pathlib
import time

import numpy as np

from cbexp.bitstream import Bitstream, bits_per_pixel
from cbexp.cli import one_line_parser, run_argparse_cli


# The largest image coded by default: 2**24 pixels (e.g. 4096 x 4096). Measured with the paper
# ChARM model (peak RSS, 768x512 vs 1536x1024): decoding needs about 1.9 KB per pixel on top of
# ~1.5 GB for the model, encoding about 0.8 KB, so this limit already means ~32 GB to decode.
# --max-pixels raises it on a machine that has the memory.
DEFAULT_MAX_PIXELS = 2**24
DECODED_SUFFIXES = (".png",)  # lossless only: the decoded image must be stored exactly


class CodecError(ValueError):
  """A model/file/image combination the codec refuses; the message says why."""


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
    if height < 1 or width < 1:
      raise CodecError(f"image of {width}x{height} pixels: nothing to code")
    if height * width > self.max_pixels:
      raise CodecError(f"image of {width}x{height} = {height * width} pixels is above the limit "
                       f"of {self.max_pixels} pixels (raise it with --max-pixels if the "
                       "machine has the memory)")

  def encode(self, image):
    import tensorflow as tf
    image = self.check_image(image)
    strings = self.module.compress(tf.constant(image)).numpy()
    return Bitstream(entropy_model=self.entropy_model, fingerprint=self.fingerprint,
                     height=image.shape[0], width=image.shape[1], strings=tuple(strings))

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
    import tensorflow as tf
    self.check_compatible(bitstream)
    image = self.module.decompress(tf.constant(bitstream.strings, tf.string),
                                   tf.constant([bitstream.height, bitstream.width], tf.int32))
    return image.numpy()

  def encoder_reconstruction(self, image):
    """The image the decoder will produce, computed on the encoder's side."""
    import tensorflow as tf
    return self.module.encoder_reconstruction(tf.constant(self.check_image(image))).numpy()


def check_model_path(spec):
  """Fails fast (before TensorFlow loads) on a model path that cannot be a model."""
  spec = str(spec)
  if spec.startswith("runs:/"):
    return
  path = pathlib.Path(spec)
  if not path.exists():
    raise CodecError(f"{spec}: no such model (expected an export folder, a model directory or "
                     "runs:/<run id>)")
  if not path.is_dir() or not ((path / "saved_model.pb").is_file()
                               or (path / "config.yaml").is_file()):
    raise CodecError(f"{spec}: not a model (expected an export folder with saved_model.pb or a "
                     "model directory with config.yaml)")


def load_codec(spec, tracking_uri=None, max_pixels=DEFAULT_MAX_PIXELS, precision=None):
  """An export folder, a model directory or ``runs:/<run id>`` -> ``Codec``. ``precision``:
  the decoding precision (cbexp.precision; None: the export's, or float32); an export's is
  fixed when it is exported."""
  from cbexp import export
  from cbexp.precision import check_precision
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
  else:
    model, cfg = export.load_trained(spec, tracking_uri)
    model.set_decode_precision(precision or "float32")
    module = export.codec_module(model, cfg)
  return Codec(module, spec, max_pixels)


# --- images --------------------------------------------------------------------------------
def describe_image_file(path, max_pixels):
  """Reads an image file's header only: -> (width, height, mode). Refuses images above the
  pixel limit before their pixels are decoded."""
  import warnings
  from PIL import Image
  from cbexp.data import DataError, load_image
  path = pathlib.Path(path)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        width, height = image.size
        mode = image.mode
  except Image.DecompressionBombError:
    raise DataError(f"{path}: image too large (above Pillow's decompression-bomb limit); the "
                    f"codec's limit is {max_pixels} pixels") from None
  except Exception:  # noqa: BLE001 - load_image names the problem (missing, empty, not an image)
    load_image(path)
    raise
  if width * height > max_pixels:
    raise CodecError(f"{path}: image of {width}x{height} = {width * height} pixels is above "
                     f"the limit of {max_pixels} pixels (raise it with --max-pixels if the "
                     "machine has the memory)")
  # Pillow refuses images above its own bomb limit; ours has just been checked.
  Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
  return width, height, mode


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
                      help="an export folder, a model directory or runs:/<mlflow run id>")
  parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ (default: "
                      "$MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
  parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help=f"refuse larger images (default {DEFAULT_MAX_PIXELS})")
  parser.add_argument("--precision", choices=("float32", "bfloat16"),  # cbexp.precision
                      help="decoding precision: float32 (the reference) or bfloat16 (synthesis "
                           "and, where safe, LRP; same streams, slightly different images; "
                           "default: the export's, float32 for model directories)")


def _check_output(path, suffixes=None):
  path = pathlib.Path(path)
  if suffixes and path.suffix.lower() not in suffixes:
    raise CodecError(f"{path}: the output name must end in {' or '.join(suffixes)}")
  if not path.parent.is_dir():
    raise CodecError(f"{path}: output folder {path.parent} does not exist")
  if path.is_dir():
    raise CodecError(f"{path}: is a folder, expected a file name")
  return path


def _check_not_same(input_path, output):
  if pathlib.Path(input_path).resolve() == output.resolve():
    raise CodecError(f"{output}: the output would overwrite the input")


def compress_command(args):
  from cbexp import bitstream
  from cbexp.data import load_image
  output = _check_output(args.output, (".cbx",))
  _check_not_same(args.input, output)
  check_model_path(args.model)
  width, height, mode = describe_image_file(args.input, args.max_pixels)
  codec = load_codec(args.model, args.tracking_uri, args.max_pixels, args.precision)
  image = load_image(args.input)
  start = time.perf_counter()
  stream = codec.encode(image)
  elapsed = time.perf_counter() - start
  size = bitstream.write(output, stream)
  print(f"{args.input} -> {output}: {width}x{height} pixels{conversion_note(mode)}, "
        f"{size} bytes, bpp {bits_per_pixel(size, height, width):.6f}, encode {elapsed:.3f} s")


def decompress_command(args):
  from cbexp import bitstream
  output = _check_output(args.output, DECODED_SUFFIXES)
  _check_not_same(args.input, output)
  check_model_path(args.model)
  stream, size = bitstream.read(args.input)  # the file is checked before the model loads
  codec = load_codec(args.model, args.tracking_uri, args.max_pixels, args.precision)
  start = time.perf_counter()
  image = codec.decode(stream)
  elapsed = time.perf_counter() - start
  bitstream.write_atomic(output, encode_png(image))
  print(f"{args.input} -> {output}: {stream.width}x{stream.height} pixels, {size} bytes, "
        f"bpp {bits_per_pixel(size, stream.height, stream.width):.6f}, decode {elapsed:.3f} s")


def eval_command(args):
  from cbexp import evaluate
  from cbexp.data import list_images
  check_model_path(args.model)
  paths = list_images(args.folder)
  if args.csv:
    csv_path = _check_output(args.csv, (".csv",))
  codec = load_codec(args.model, args.tracking_uri, args.max_pixels, args.precision)
  print(f"{codec.entropy_model} model {codec.fingerprint} from {codec.source}: "
        f"{len(paths)} images, times in seconds after a warm-up per image shape")
  print(_ROW.format("image", "size", "bytes", "bpp", "psnr", "ms_ssim", "ms_ssim_db",
                    "encode_s", "decode_s"))
  per_image, s = evaluate.evaluate(codec, paths, warmup=not args.no_warmup,
                                   progress=lambda r: print(_format_row(r), flush=True))
  # The set's numbers as cbexp.evaluate defines them (MS-SSIM dB: of the mean MS-SSIM).
  print(_ROW.format("mean", "", "", f"{s['bpp']:.4f}", f"{s['psnr']:.3f}", f"{s['ms_ssim']:.5f}",
                    f"{s['ms_ssim_db']:.3f}", f"{s['encode_time_mean']:.3f}",
                    f"{s['decode_time_mean']:.3f}"))
  print(_ROW.format("median time", "", "", "", "", "", "", f"{s['encode_time_median']:.3f}",
                    f"{s['decode_time_median']:.3f}"))
  if args.csv:
    from cbexp.bitstream import write_atomic
    table = per_image.drop(columns=["bpp_estimated"])  # no model estimate behind an export
    write_atomic(csv_path, table.to_csv(index=False).encode())
    print(f"per-image results written to {csv_path}")


def main(argv=None):
  parser = one_line_parser(prog="python -m cbexp.codec",
                           description="Compress images to .cbx files and back with a cbexp model.")
  commands = parser.add_subparsers(dest="command", required=True)
  compress = commands.add_parser("compress", help="image (PNG, JPEG) -> .cbx")
  _add_model_arguments(compress)
  compress.add_argument("input")
  compress.add_argument("output")
  compress.set_defaults(run=compress_command)
  decompress = commands.add_parser("decompress", help=".cbx -> PNG")
  _add_model_arguments(decompress)
  decompress.add_argument("input")
  decompress.add_argument("output")
  decompress.set_defaults(run=decompress_command)
  evaluate_ = commands.add_parser("eval", help="bpp, PSNR, MS-SSIM and times over a folder")
  _add_model_arguments(evaluate_)
  evaluate_.add_argument("folder", help="a folder of images or a glob pattern")
  evaluate_.add_argument("--csv", help="also write the per-image table to this CSV file")
  evaluate_.add_argument("--no-warmup", action="store_true", help="time the first calls too")
  evaluate_.set_defaults(run=eval_command)
  return run_argparse_cli(parser, lambda args: args.run(args), argv)


if __name__ == "__main__":
  raise SystemExit(main())
