"""``cbexp codec compress|decompress|eval`` (``python -m cbexp.codec``): images to ``.cbx`` files
and back with any model reference (``cbexp.load``). Inputs, outputs and sizes are checked before
TensorFlow loads; no output is left behind by a refusal (outputs are written atomically)."""

import os
import pathlib
import sys
import threading
import time

from cbexp import files
from cbexp.cli.common import (
  one_line_parser,
  release_freed_memory,
  return_freed_memory,
  run_command,
)
from cbexp.codec import bitstream
from cbexp.codec.codec import (
  DECODE_TIMEOUT_BASE_S,
  DECODE_TIMEOUT_PER_PIXEL_S,
  DECODED_SUFFIXES,
  DEFAULT_MAX_PIXELS,
  STRINGS_REFUSED,
  CodecError,
  check_header,
  conversion_note,
  decode_timeout,
  describe_image_file,
  encode_png,
)
from cbexp.constants import DEFAULT_MEMORY_BUDGET_MB, PAD_MULTIPLE
from cbexp.errors import USER_ERROR
from cbexp.images import list_images, load_image, pillow_pixel_limit
from cbexp.load import ModelRef, load_codec

PROG = "cbexp codec"


def compress(args):
  output = check_output(args.output, (".cbx",), args.force, args.input)
  ModelRef.parse(args.model)
  _, _, mode = describe_image_file(args.input, args.max_pixels)  # before the model loads
  codec = _load(args)
  image = load_image(args.input, args.max_pixels)
  codec.prepare()
  release_freed_memory()
  height, width = image.shape[:2]  # upright (EXIF orientation applied)
  start = time.perf_counter()
  stream = codec.encode(image)
  elapsed = time.perf_counter() - start
  size = write_output(output, stream.to_bytes(), args.force)
  print(
    f"{args.input} -> {output}: {width}x{height} pixels{conversion_note(mode)}, "
    f"{size} bytes, bpp {bitstream.bits_per_pixel(size, height, width):.6f}, "
    f"encode {elapsed:.3f} s"
  )


def decompress(args):
  output = check_output(args.output, DECODED_SUFFIXES, args.force, args.input)
  ModelRef.parse(args.model)
  # The header is checked (pixel limit, string sizes) before the strings are read, and the
  # whole file before the model loads.
  stream, size = bitstream.read(args.input, lambda header: check_header(header, args.max_pixels))
  codec = _load(args)
  codec.check_compatible(stream)
  codec.prepare(stream)
  release_freed_memory()
  timer = watchdog(decode_timeout(stream.height, stream.width, args.decode_timeout))
  try:
    start = time.perf_counter()
    image = codec.decode(stream)
    elapsed = time.perf_counter() - start
  finally:
    timer.cancel()
  write_output(output, encode_png(image), args.force)
  print(
    f"{args.input} -> {output}: {stream.width}x{stream.height} pixels, {size} bytes, "
    f"bpp {bitstream.bits_per_pixel(size, stream.height, stream.width):.6f}, "
    f"decode {elapsed:.3f} s"
  )


def evaluate_folder(args):
  from cbexp.evaluation import evaluate  # TensorFlow: once the inputs are known to be good

  ModelRef.parse(args.model)
  paths = list_images(args.folder)
  csv_path = check_output(args.csv, (".csv",), args.force) if args.csv else None
  for path in paths:  # every image's size, from its header, before the model loads
    describe_image_file(path, args.max_pixels)
  codec = _load(args)
  print(
    f"{codec.entropy_model} model {codec.fingerprint} from {codec.source}: "
    f"{len(paths)} images, times in seconds after a warm-up per image shape"
  )
  print(
    _ROW.format(
      "image", "size", "bytes", "bpp", "psnr", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s"
    )
  )
  with pillow_pixel_limit(args.max_pixels):
    per_image, s = evaluate.evaluate(
      codec, paths, warmup=not args.no_warmup, progress=lambda r: print(_format_row(r), flush=True)
    )
  # The set's numbers as cbexp.evaluation.evaluate defines them (MS-SSIM dB: of the mean).
  print(
    _ROW.format(
      "mean",
      "",
      "",
      f"{s['bpp']:.4f}",
      f"{s['psnr']:.3f}",
      f"{s['ms_ssim']:.5f}",
      f"{s['ms_ssim_db']:.3f}",
      f"{s['encode_time_mean']:.3f}",
      f"{s['decode_time_mean']:.3f}",
    )
  )
  print(
    _ROW.format(
      "median time",
      "",
      "",
      "",
      "",
      "",
      "",
      f"{s['encode_time_median']:.3f}",
      f"{s['decode_time_median']:.3f}",
    )
  )
  if csv_path:
    table = per_image.drop(columns=["bpp_estimated"])  # no model estimate behind an export
    write_output(csv_path, table.to_csv(index=False).encode(), args.force)
    print(f"per-image results written to {csv_path}")


_ROW = "{:<16} {:>9} {:>8} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9}"


def _format_row(r):
  return _ROW.format(
    r["image"],
    f"{r['width']}x{r['height']}",
    r["bytes"],
    f"{r['bpp']:.4f}",
    f"{r['psnr']:.3f}",
    f"{r['ms_ssim']:.5f}",
    f"{r['ms_ssim_db']:.3f}",
    f"{r['encode_s']:.3f}",
    f"{r['decode_s']:.3f}",
  )


def _load(args):
  return load_codec(
    args.model,
    args.precision,
    args.numerics,
    args.tracking_uri,
    args.max_pixels,
    args.memory_budget,
  )


def check_output(path, suffixes, force, input_path=None):
  """The output file's name, refused if it has another suffix, its folder is missing, it is a
  folder, it exists (without --force) or it is the input."""
  path = pathlib.Path(path)
  if path.suffix.lower() not in suffixes:
    raise CodecError(f"{path}: the output name must end in {' or '.join(suffixes)}")
  if not path.parent.is_dir():
    raise CodecError(f"{path}: output folder {path.parent} does not exist")
  if path.is_dir():
    raise CodecError(f"{path}: is a folder, expected a file name")
  if path.exists() and not force:
    raise CodecError(_exists(path))
  if input_path is not None and pathlib.Path(input_path).resolve() == path.resolve():
    raise CodecError(f"{path}: the output would overwrite the input")
  return path


def write_output(path, data, force):
  """Writes an output checked by ``check_output``; -> its size in bytes. Without --force the
  name is claimed as the file is written (``files.write_atomic(replace=False)``): of two
  commands writing the same new name at once, one writes it and the other is refused."""
  try:
    files.write_atomic(path, data, replace=force)
  except FileExistsError:
    raise CodecError(_exists(path)) from None
  return len(data)


def _exists(path):
  return f"{path}: already exists; pass --force to overwrite it"


def watchdog(seconds):
  """Ends the process with one line on stderr if decoding still runs after ``seconds`` (the
  caller cancels it): tfc's range decoder can loop forever in C++ on crafted strings, out of
  reach of Python exceptions. No output has been written at that point."""

  def expire():
    sys.stderr.write(
      f"{PROG}: error: decoding did not finish within {seconds:.0f} s: "
      f"{STRINGS_REFUSED} (--decode-timeout changes the limit)\n"
    )
    sys.stderr.flush()
    os._exit(USER_ERROR)

  timer = threading.Timer(seconds, expire)
  timer.daemon = True
  if seconds:
    timer.start()
  return timer


def _add_common_arguments(parser, what="the output file"):
  parser.add_argument(
    "--model",
    required=True,
    help="an export folder, a model directory, runs:/<mlflow run id> or "
    "models:/<registered name>/<version>",
  )
  parser.add_argument(
    "--tracking-uri",
    help="MLflow tracking URI for runs:/ and models:/ "
    "(default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)",
  )
  parser.add_argument(
    "--max-pixels",
    type=int,
    default=DEFAULT_MAX_PIXELS,
    help="refuse larger images, counted once padded to a multiple of "
    f"{PAD_MULTIPLE} per side (default {DEFAULT_MAX_PIXELS})",
  )
  parser.add_argument(
    "--precision",
    choices=("float32", "bfloat16"),
    help="decoding precision: float32 (the reference) or bfloat16 (same "
    "streams, slightly different images; default: the export's, float32 "
    "for the other references)",
  )
  parser.add_argument(
    "--numerics",
    choices=("float", "exact"),
    help="entropy-parameter numerics: exact computes the means and scale "
    "indexes in integer arithmetic, so every machine decodes the same symbols "
    "(the image may still differ by one level in a few pixels: the synthesis "
    "stays float); encoder and decoder must use the same (default: the "
    "model's own)",
  )
  parser.add_argument(
    "--memory-budget",
    type=float,
    metavar="MB",
    help="memory for the analysis's or the synthesis's activations: they run over tiles that "
    "fit it, with the same strings and pixels as untiled (default: an export's own, "
    f"{DEFAULT_MEMORY_BUDGET_MB} MB for the other references; 0: untiled)",
  )
  parser.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists")


EXAMPLES = """examples:
  cbexp codec compress --model outputs/runs/<run>/model kodim01.png a.cbx
  cbexp codec decompress --model outputs/runs/<run>/model a.cbx a.png
  cbexp codec eval --model runs:/<run id> $CBEXP_KODAK_DIR --csv t.csv
"""


def build_parser():
  parser = one_line_parser(
    PROG,
    "Compress images to .cbx files and back with a cbexp model. `<command> --help` lists each "
    "command's options.",
    EXAMPLES,
  )
  commands = parser.add_subparsers(dest="command", required=True)
  for name, run, text in (
    ("compress", compress, "image (PNG, JPEG) -> .cbx"),
    ("decompress", decompress, ".cbx -> PNG"),
  ):
    command = commands.add_parser(name, help=text)
    command.add_argument("input")
    command.add_argument("output")
    _add_common_arguments(command)
    command.set_defaults(run=run)
  commands.choices["decompress"].add_argument(
    "--decode-timeout",
    type=float,
    metavar="SECONDS",
    help=f"stop decoding after this long (default: {DECODE_TIMEOUT_BASE_S:.0f} s + "
    f"{DECODE_TIMEOUT_PER_PIXEL_S * 1e6:.0f} us per coded pixel; 0: no limit)",
  )
  command = commands.add_parser("eval", help="bpp, PSNR, MS-SSIM and times over a folder")
  command.add_argument("folder", help="a folder of images or a glob pattern")
  command.add_argument("--csv", help="also write the per-image table to this CSV file")
  command.add_argument("--no-warmup", action="store_true", help="time the first calls too")
  _add_common_arguments(command, "the CSV file")
  command.set_defaults(run=evaluate_folder)
  return parser


def main(argv=None):
  args = build_parser().parse_args(argv)
  if args.command in ("compress", "decompress") and args.memory_budget != 0:
    return_freed_memory()  # bounded memory; eval keeps TensorFlow's pool: its times are speed
  return run_command(PROG, args.run, args)


if __name__ == "__main__":
  sys.exit(main())
