"""Hostile files, hostile models. Every class of bad input meets the user where they meet it, on
the command line: exit status 2, exactly one line on stderr, no traceback, no
output file, and nothing run or allocated that the input should not cause.

* sizes are checked from headers (the .cbx header, the image file's) before the model loads and
  before anything large is allocated; the pixel limit counts the padded image;
* strings are verified while they are decoded (re-encoded, and their cost under the coder's
  tables bounded by their length); tfc's range decoder can loop forever on some crafted strings,
  which a deadline ends;
* images: EXIF orientation, 48-bit PNG, directories, existing outputs (--force);
* the fingerprint covers the range-coding tables;
* a model directory is data: its config is validated against an allow-list before anything is
  built, so a config that names code (``_target_``) never runs it.
"""

import concurrent.futures
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from cbexp.cli.codec import main as codec_main
from cbexp.cli.export import main as export_main
from cbexp.codec import bitstream, codec
from cbexp.codec import savedmodel as export
from cbexp.codec.bitstream import Bitstream
from cbexp.config import build_model, compose
from cbexp.errors import USER_ERROR
from cbexp.images import load_image
from cbexp.load import LoadError, load_codec
from helpers.codec_cli import assert_refused, run_codec
from helpers.models import tiny_overrides

REFUSED_STRINGS = (
  "the strings are corrupt or were not written by this model, or the decoder's "
  "numeric environment differs from the encoder's"
)
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every PNG file
# A legit tiny decode peaks at ~1.7 GB of address space (TensorFlow's libraries and thread
# stacks, MALLOC_ARENA_MAX=2); the hostile files below would need 12 GB and more.
ADDRESS_SPACE_LIMIT = 3 << 30


def assert_one_line(returncode, stderr, message):
  assert returncode == USER_ERROR, stderr
  lines = stderr.splitlines()
  assert len(lines) == 1, stderr
  assert "Traceback" not in stderr
  assert re.search(message, lines[0]), lines[0]


def assert_main_refused(main, argv, capsys, message, output=None):
  """The same contract for the codec and export commands' main() run in this process."""
  returncode = main([str(a) for a in argv])
  captured = capsys.readouterr()
  assert_one_line(returncode, captured.err, message)
  if output is not None:
    assert not output.exists()
  return captured


def crafted(stream, **changes):
  """A .cbx file's bytes (format 2: the stream's symbol checks kept) with some fields changed and
  a valid checksum."""
  values = dict(
    entropy_model=stream.entropy_model,
    fingerprint=stream.fingerprint,
    height=stream.height,
    width=stream.width,
    strings=stream.strings,
    checks=stream.checks,
  )
  values.update(changes)
  return Bitstream(**values).to_bytes()


@pytest.fixture(scope="module")
def tiny(tiny_files):
  """test_codec_cli's tiny checkerboard model directory and good.cbx (a 40x50 image), the
  stream, and that image as image.png."""
  folder, stream = tiny_files
  image = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  Image.fromarray(image).save(folder / "image.png")
  return folder, stream


# --- 1, 4: sizes from headers, before the model loads; memory bounded ---------------------------
def _png(path, width, height, bit_depth, colour_type, rows):
  """A PNG written by hand from its filtered rows: Pillow writes no 48-bit RGB, and needs the
  pixels in memory for the others."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", header)
    + chunk(b"IDAT", zlib.compress(rows, 9))
    + chunk(b"IEND", b"")
  )
  return path


def _gray_png(path, width, height):
  """A black 8-bit gray PNG (a few KB even at 16777216 x 1: the rows compress to nothing)."""
  return _png(path, width, height, 8, 0, b"\0" * (height * (width + 1)))


def test_hostile_sizes_are_refused_under_a_memory_limit(tiny, tmp_path):
  """Under a 3 GB address-space limit a legit decode works and every hostile size is refused in
  one line (before: a 59-byte file or a 16777216x1 PNG went on to ask for 12+ GB)."""
  folder, stream = tiny
  legit = run_codec(
    "decompress",
    "--model",
    folder / "model",
    folder / "good.cbx",
    "legit.png",
    cwd=tmp_path,
    address_space=ADDRESS_SPACE_LIMIT,
  )
  assert legit.returncode == 0, legit.stderr  # the limit leaves TensorFlow room to work

  # 71 bytes: a 16777216 x 1 image with empty strings (16777216 x 64 once padded).
  tall = crafted(stream, height=1, width=2**24, strings=(b"", b"", b""))
  assert len(tall) == 71
  (tmp_path / "tall.cbx").write_bytes(tall)
  # 1 GiB (sparse) for a 4096 x 4096 image: more than any stream of that size can need.
  header = crafted(stream, height=4096, width=4096, strings=(b"", b"", b""))[:-4]  # no strings
  with open(tmp_path / "huge.cbx", "wb") as f:  # the three string lengths, then the checks
    f.write(header[:-24] + struct.pack(">III", 2**30, 0, 0) + header[-12:])
    f.truncate(len(header) + 2**30 + 4)
  cases = [
    (
      "decompress",
      "tall.cbx",
      "out.png",
      r"16777216x1 pixels, coded as 16777216x64 = 1073741824 pixels .* above the limit "
      r"of 67108864",
    ),
    (
      "decompress",
      "huge.cbx",
      "out.png",
      r"announces 1073741824 bytes of strings for 4096x4096 pixels, more than any stream",
    ),
    (
      "compress",
      _gray_png(tmp_path / "wide.png", 2**24, 1),
      "out.cbx",
      r"wide.png: image of 16777216x1 pixels, coded as 16777216x64",
    ),
    (
      "compress",
      _gray_png(tmp_path / "wide2.png", 2**20 + 1, 1),
      "out.cbx",
      r"wide2.png: image of 1048577x1 pixels, coded as 1048640x64 = 67112960 pixels",
    ),
    (  # just above the limit (2^26 pixels, 67 MP) by its header
      "decompress",
      "above.cbx",
      "out.png",
      r"the header announces an image of 8193x8192 pixels, coded as 8256x8192 = 67633152 "
      r"pixels .* above the limit of 67108864",
    ),
  ]
  (tmp_path / "above.cbx").write_bytes(crafted(stream, height=8192, width=8193))
  for command, source, output, message in cases:
    result = run_codec(
      command,
      "--model",
      folder / "model",
      source,
      output,
      cwd=tmp_path,
      address_space=ADDRESS_SPACE_LIMIT,
    )
    assert_refused(result, tmp_path / output, message)


def test_header_sizes_are_checked_before_the_model_loads(tiny, tmp_path, capsys):
  """The model directory here has no weights: had it been loaded, the error would say so."""
  folder, stream = tiny
  broken = tmp_path / "broken_model"
  broken.mkdir()
  shutil.copy(folder / "model" / "config.yaml", broken / "config.yaml")
  (tmp_path / "tall.cbx").write_bytes(crafted(stream, height=70000, width=70000))
  assert_main_refused(
    codec_main,
    ["decompress", "--model", broken, tmp_path / "tall.cbx", tmp_path / "out.png"],
    capsys,
    "the header announces an image of 70000x70000 pixels",
    tmp_path / "out.png",
  )
  _gray_png(tmp_path / "big.png", 9000, 9000)
  assert_main_refused(
    codec_main,
    ["compress", "--model", broken, tmp_path / "big.png", tmp_path / "out.cbx"],
    capsys,
    "big.png: image of 9000x9000 pixels, coded as 9024x9024",
    tmp_path / "out.cbx",
  )
  folder_of_images = tmp_path / "images"
  folder_of_images.mkdir()
  _gray_png(folder_of_images / "big.png", 9000, 9000)
  assert_main_refused(
    codec_main,
    ["eval", "--model", broken, folder_of_images],
    capsys,
    "big.png: image of 9000x9000 pixels",
  )
  # The whole string table must fit the file: lengths that announce more are refused.
  data = bytearray((folder / "good.cbx").read_bytes())
  lengths_end = -4 - sum(map(len, stream.strings)) - 12  # the three lengths, then the checks
  data[lengths_end - 12 : lengths_end] = struct.pack(">III", 2**31, 2**31, 2**31)
  (tmp_path / "lying.cbx").write_bytes(bytes(data))
  assert_main_refused(
    codec_main,
    ["decompress", "--model", broken, tmp_path / "lying.cbx", tmp_path / "out.png"],
    capsys,
    "truncated or corrupted",
  )


def test_max_pixels_above_pillows_limit_takes_effect(tiny, tmp_path, capsys, monkeypatch):
  """Pillow refuses images above twice its own limit; --max-pixels replaces that limit."""
  folder, _ = tiny
  Image.fromarray(np.full((50, 50, 3), 128, np.uint8)).save(tmp_path / "image.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2500 pixels: a "bomb" for Pillow now
  assert (
    codec_main(
      [
        "compress",
        "--model",
        str(folder / "model"),
        "--max-pixels",
        "5000",
        str(tmp_path / "image.png"),
        str(tmp_path / "out.cbx"),
      ]
    )
    == 0
  ), capsys.readouterr().err
  assert (tmp_path / "out.cbx").is_file()
  assert Image.MAX_IMAGE_PIXELS == 1000  # restored after use
  assert_main_refused(
    codec_main,
    [
      "compress",
      "--model",
      folder / "model",
      "--max-pixels",
      "4000",
      tmp_path / "image.png",
      tmp_path / "refused.cbx",
    ],
    capsys,
    "above the limit of 4000 pixels",
    tmp_path / "refused.cbx",
  )


def test_cbx_is_read_once_and_checked_while_read(tiny, tmp_path):
  folder, stream = tiny
  assert bitstream.read(folder / "good.cbx") == (stream, (folder / "good.cbx").stat().st_size)
  seen = []
  bitstream.read(folder / "good.cbx", seen.append)
  assert (seen[0].height, seen[0].width, seen[0].lengths) == (
    40,
    50,
    tuple(len(s) for s in stream.strings),
  )


# --- 3: strings that are not what the encoder wrote -----------------------------------------------
STRING_CASES = [
  "empty y string",
  "all strings empty",
  "trailing byte in z",
  "trailing zero byte in y",
  "random y bytes",
  "random bytes everywhere",
  "header claims a larger image",
]


def _string_cases(stream):
  z, anchors, non_anchors = stream.strings
  noise = np.random.default_rng(1).bytes
  return {
    "empty y string": dict(strings=(z, b"", non_anchors)),
    "all strings empty": dict(strings=(b"", b"", b"")),
    "trailing byte in z": dict(strings=(z + b"\x17", anchors, non_anchors)),
    "trailing zero byte in y": dict(strings=(z, anchors + b"\0", non_anchors)),
    "random y bytes": dict(strings=(z, noise(len(anchors)), non_anchors)),
    "random bytes everywhere": dict(strings=tuple(noise(len(s)) for s in stream.strings)),
    "header claims a larger image": dict(height=400, width=500),
  }


@pytest.mark.parametrize("case", STRING_CASES)
def test_crafted_strings_are_refused_in_one_line(tiny, tmp_path, capsys, case):
  folder, stream = tiny
  (tmp_path / "in.cbx").write_bytes(crafted(stream, **_string_cases(stream)[case]))
  assert_main_refused(
    codec_main,
    ["decompress", "--model", folder / "model", tmp_path / "in.cbx", tmp_path / "out.png"],
    capsys,
    "cannot decode: " + re.escape(REFUSED_STRINGS),
    tmp_path / "out.png",
  )


def test_a_string_that_hangs_tfcs_decoder_is_stopped(tiny, tmp_path):
  """tfc's overflow decoding (Elias gamma) loops forever when its value sits exactly on the
  escape interval's lower end and only implicit zeros follow: a 2-byte z string does it."""
  from cbexp.codec.model_dir import load_model_dir
  from cbexp.entropy.base import coder_tables

  folder, stream = tiny
  model, _ = load_model_dir(folder / "model")
  tables = coder_tables(model.z_coder)
  escape_lower = int(tables.cdf[0, tables.lengths[0] - 2])  # channel 0: the first symbol decoded
  z = (escape_lower << (32 - tables.precision)).to_bytes(4, "big").rstrip(b"\0")
  (tmp_path / "hang.cbx").write_bytes(crafted(stream, strings=(z, b"\x01", b"\x01")))
  result = run_codec(
    "decompress",
    "--model",
    folder / "model",
    "--decode-timeout",
    "5",
    "hang.cbx",
    "out.png",
    cwd=tmp_path,
  )
  assert_refused(
    result,
    tmp_path / "out.png",
    "decoding did not finish within 5 s: " + re.escape(REFUSED_STRINGS),
  )


# --- 5: images ---------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tiny, tmp_path, capsys):
  folder, _ = tiny
  pixels = np.random.default_rng(2).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif)
  upright = np.rot90(pixels, -1)
  np.testing.assert_array_equal(load_image(tmp_path / "rotated.png"), upright)
  assert (
    codec_main(
      [
        "compress",
        "--model",
        str(folder / "model"),
        str(tmp_path / "rotated.png"),
        str(tmp_path / "rotated.cbx"),
      ]
    )
    == 0
  )
  assert "20x30 pixels" in capsys.readouterr().out  # width x height, upright
  assert (
    codec_main(
      [
        "decompress",
        "--model",
        str(folder / "model"),
        str(tmp_path / "rotated.cbx"),
        str(tmp_path / "decoded.png"),
      ]
    )
    == 0
  )
  assert load_image(tmp_path / "decoded.png").shape == (30, 20, 3)


def _png48(path, array):
  """A 16-bit-per-channel RGB PNG (Pillow reads it as 8-bit RGB)."""
  rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)
  return _png(path, array.shape[1], array.shape[0], 16, 2, rows)


def test_48_bit_png_is_converted_with_a_note(tiny, tmp_path, capsys):
  folder, _ = tiny
  array = np.random.default_rng(3).integers(0, 65536, size=(21, 13, 3)).astype(np.uint16)
  _png48(tmp_path / "deep.png", array)
  assert codec.describe_image_file(tmp_path / "deep.png", 10**6) == (13, 21, "RGB;16")
  np.testing.assert_array_equal(load_image(tmp_path / "deep.png"), (array >> 8).astype(np.uint8))
  assert (
    codec_main(
      [
        "compress",
        "--model",
        str(folder / "model"),
        str(tmp_path / "deep.png"),
        str(tmp_path / "deep.cbx"),
      ]
    )
    == 0
  )
  assert "(converted from 16-bit RGB to 8-bit RGB)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["float TIFF", "32-bit integer TIFF", "PNG without IEND"])
def test_an_image_that_would_be_misread_is_refused(tiny, tmp_path, capsys, case):
  """Valid files that would turn into a wrong image without a word: float samples in 0..1 (all
  black once scaled), 32-bit integer samples (saturated white), and a PNG cut before its IEND
  chunk (its pixels complete, the file damaged). Refused in one line by the codec (before the
  model loads), by load_image and by the training-data check; data after IEND is ignored."""
  from cbexp.images import DataError, check_images

  folder, _ = tiny
  gray = np.random.default_rng(4).random((21, 13))
  if case == "PNG without IEND":
    path = tmp_path / "cut.png"
    path.write_bytes((folder / "image.png").read_bytes()[: -len(PNG_IEND)])
    message = "truncated PNG (the file ends before its IEND chunk); copy or save it again"
    (tmp_path / "after.png").write_bytes(path.read_bytes() + PNG_IEND + b"trailing data")
    assert load_image(tmp_path / "after.png").shape == (40, 50, 3)
  else:
    path = tmp_path / "deep.tif"
    if case == "float TIFF":
      Image.fromarray(gray.astype(np.float32), "F").save(path)
      kind = "32-bit float samples (Pillow mode F)"
    else:  # a 16-bit range in 32-bit samples
      Image.fromarray((gray * 65535).astype(np.int32), "I").save(path)
      kind = "32-bit integer samples (Pillow mode I)"
    message = f"{kind} have no fixed range that maps to 8 bits; convert the image to 8 or 16 bits"
  output = tmp_path / "out.cbx"
  argv = ["compress", "--model", folder / "model", path, output]
  assert_main_refused(codec_main, argv, capsys, re.escape(f"{path}: {message}"), output)
  for read in (load_image, lambda p: check_images([p])):
    with pytest.raises(DataError, match=re.escape(message)):
      read(path)


def test_a_directory_is_named_as_one(tiny, tmp_path, capsys):
  folder, _ = tiny
  (tmp_path / "a_folder.png").mkdir()
  (tmp_path / "a_folder.cbx").mkdir()
  assert_main_refused(
    codec_main,
    ["compress", "--model", folder / "model", tmp_path / "a_folder.png", tmp_path / "out.cbx"],
    capsys,
    "a_folder.png: is a directory, expected an image file",
    tmp_path / "out.cbx",
  )
  assert_main_refused(
    codec_main,
    ["decompress", "--model", folder / "model", tmp_path / "a_folder.cbx", tmp_path / "out.png"],
    capsys,
    "a_folder.cbx: is a directory, expected a .cbx file",
    tmp_path / "out.png",
  )


@pytest.mark.parametrize("when", ["before the command", "while the model loads"])
def test_existing_outputs_are_kept_unless_forced(tiny, tmp_path, capsys, monkeypatch, when):
  """An output that exists is kept (without --force). "while the model loads": the file of
  another command writing the same new name at once, after this one checked the name; the name
  is claimed again, atomically, as the output is written."""
  from cbexp.cli import codec as codec_cli

  folder, _ = tiny
  images = tmp_path / "images"
  images.mkdir()
  shutil.copy(folder / "image.png", images / "image.png")
  model = str(folder / "model")
  commands = {
    "out.cbx": ["compress", "--model", model, str(folder / "image.png")],
    "out.png": ["decompress", "--model", model, str(folder / "good.cbx")],
    "out.csv": ["eval", "--model", model, str(images), "--no-warmup", "--csv"],
  }
  load_codec = codec_cli.load_codec
  for name, argv in commands.items():
    output = tmp_path / name

    def load_while_another_command_writes(*args, output=output, **kwargs):
      output.write_text("keep me")
      return load_codec(*args, **kwargs)

    if when == "before the command":
      output.write_text("keep me")
    else:
      monkeypatch.setattr(codec_cli, "load_codec", load_while_another_command_writes)
    assert_main_refused(
      codec_main,
      argv + [str(output)],
      capsys,
      f"{name}: already exists; pass --force to overwrite it",
    )
    assert output.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}")]
    monkeypatch.undo()
    assert codec_main(argv + [str(output), "--force"]) == 0, capsys.readouterr().err
    assert output.stat().st_size > 0 and output.read_bytes() != b"keep me"


def test_two_compressions_to_one_new_file_leave_one_writer(tiny, tmp_path):
  """Two processes started together on the same new output: one writes it (exit 0), the other is
  refused in one line (exit 2); the file is the first's, whole."""
  folder, stream = tiny
  output = tmp_path / "out.cbx"
  argv = ["compress", "--model", folder / "model", folder / "image.png", output]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda _: run_codec(*argv, cwd=tmp_path), range(2)))
  assert sorted(r.returncode for r in results) == [0, USER_ERROR], [r.stderr for r in results]
  refused = next(r for r in results if r.returncode == USER_ERROR)
  assert_one_line(refused.returncode, refused.stderr, "out.cbx: already exists")
  assert bitstream.read(output)[0] == stream


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links"])
def test_a_new_output_is_claimed_once_with_or_without_hard_links(tmp_path, monkeypatch, links):
  """write_atomic(replace=False): the first writer's bytes, the second told FileExistsError, no
  temporary left, also where the file system refuses hard links (the name is claimed by O_EXCL)."""
  import errno
  import os

  from cbexp import files

  if not links:

    def no_link(source, target):
      raise OSError(errno.EPERM, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "link", no_link)
  output = tmp_path / "out.cbx"
  files.write_atomic(output, b"first", replace=False)
  with pytest.raises(FileExistsError):
    files.write_atomic(output, b"second", replace=False)
  assert output.read_bytes() == b"first"
  assert [p.name for p in tmp_path.iterdir()] == ["out.cbx"]


# --- 6: the fingerprint covers the range-coding tables --------------------------------------------
def test_altered_range_coding_tables_are_refused(tiny, tmp_path, capsys):
  folder, _ = tiny
  cfg = compose(tiny_overrides("checkerboard"))
  tf.keras.utils.set_random_seed(0)
  model = build_model(cfg)  # its own: the tables are altered below
  model.build_coders()
  module = export.build_codec_functions(model, cfg)
  export.verify_fingerprint(module)
  names = [v.name.rsplit("/", 1)[-1] for v in module.tables]
  assert sorted(names) == ["cdf:0", "cdf:0", "cdf_offset:0", "cdf_offset:0"], names
  for table in module.tables:  # each table, the z coder's and the Gaussian's, CDF and offsets
    original = table.numpy()
    table.assign(
      original
      + np.where(np.arange(original.size) == original.size // 2, 1, 0).astype(original.dtype)
    )
    with pytest.raises(export.ExportError, match="range-coding tables do not match"):
      export.verify_fingerprint(module)
    table.assign(original)
  offsets = module.tables[names.index("cdf_offset:0")]
  offsets.assign_add(tf.ones_like(offsets))
  tf.saved_model.save(module, str(tmp_path / "altered"))
  assert_main_refused(
    codec_main,
    ["decompress", "--model", tmp_path / "altered", folder / "good.cbx", tmp_path / "out.png"],
    capsys,
    "do not match the stored fingerprint .*the export is damaged or was altered",
    tmp_path / "out.png",
  )


# --- 7: a model directory is data -----------------------------------------------------------------
def _hostile_model(folder, tmp_path, name, edit):
  """A copy of the tiny model directory whose config.yaml ``edit(config dict)`` changed."""
  hostile = tmp_path / name
  shutil.copytree(folder / "model", hostile)
  config = yaml.safe_load((hostile / "config.yaml").read_text())
  edit(config)
  (hostile / "config.yaml").write_text(yaml.safe_dump(config))
  return hostile


@pytest.fixture
def victim(tmp_path):
  path = tmp_path / "victim.txt"
  path.write_text("precious")
  return path


def _hostile_edits(victim, copied):
  opener = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
  copier = {"_target_": "shutil.copyfile", "src": str(victim), "dst": str(copied)}
  writer = {"_target_": "tensorflow.io.write_file", "filename": str(victim), "contents": "owned"}
  return {
    "nested open": ("entropy.hidden_filters", lambda c: c["entropy"].update(hidden_filters=opener)),
    "nested copyfile": ("entropy.name", lambda c: c["entropy"].update(name=copier)),
    "nested write_file in transform": (
      "transform.num_filters",
      lambda c: c["transform"].update(num_filters=writer),
    ),
    "entropy target": (
      "entropy._target_",
      lambda c: c["entropy"].update(_target_="shutil.copyfile", src=str(victim), dst=str(copied)),
    ),
    "target elsewhere": ("dataset._target_", lambda c: c.update(dataset=copier)),
    "hydra flags": ("entropy._recursive_", lambda c: c["entropy"].update(_recursive_=True)),
  }


@pytest.mark.parametrize("case", list(_hostile_edits("v", "c")))
def test_a_config_that_names_code_is_refused_before_anything_runs(
  tiny, tmp_path, capsys, victim, case
):
  folder, _ = tiny
  copied = tmp_path / "copied.txt"
  key, edit = _hostile_edits(victim, copied)[case]
  hostile = _hostile_model(folder, tmp_path, "hostile_model", edit)
  images = tmp_path / "images"
  images.mkdir()
  shutil.copy(folder / "image.png", images / "image.png")
  message = re.escape(f"{hostile / 'config.yaml'}: {key}")
  assert_main_refused(codec_main, ["eval", "--model", hostile, images], capsys, message)
  assert_main_refused(
    export_main,
    ["--from", hostile, "--out", tmp_path / "export"],
    capsys,
    message,
    tmp_path / "export",
  )
  assert_main_refused(
    codec_main,
    ["decompress", "--model", hostile, folder / "good.cbx", tmp_path / "out.png"],
    capsys,
    message,
    tmp_path / "out.png",
  )
  assert victim.read_text() == "precious" and not copied.exists()


def test_a_hostile_model_is_refused_from_a_subprocess_and_an_mlflow_run(tiny, tmp_path, victim):
  import mlflow

  folder, _ = tiny
  hostile = _hostile_model(
    folder,
    tmp_path,
    "hostile_model",
    _hostile_edits(victim, tmp_path / "copied.txt")["nested open"][1],
  )
  images = tmp_path / "images"
  images.mkdir()
  shutil.copy(folder / "image.png", images / "image.png")
  result = run_codec("eval", "--model", hostile, images, cwd=tmp_path)
  assert_one_line(
    result.returncode, result.stderr, "entropy.hidden_filters: a mapping is not allowed here"
  )
  result = run_codec("--from", hostile, "--out", "export", cwd=tmp_path, module="cbexp.export")
  assert_one_line(result.returncode, result.stderr, "entropy.hidden_filters")
  tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
  mlflow.set_tracking_uri(tracking_uri)
  try:
    experiment_id = mlflow.create_experiment("hostile")
    with mlflow.start_run(experiment_id=experiment_id) as run:
      mlflow.log_artifacts(str(hostile), artifact_path="model")
  finally:
    mlflow.set_tracking_uri(None)
  reference = f"runs:/{run.info.run_id}"
  with pytest.raises(LoadError, match=f"^{reference}: config.yaml: entropy.hidden_filters"):
    load_codec(reference, tracking_uri=tracking_uri)
  assert victim.read_text() == "precious" and not (tmp_path / "export").exists()


@pytest.mark.parametrize("case", ["damaged index", "missing data", "another config's weights"])
def test_weights_that_cannot_be_read_are_one_line(tiny, tmp_path, capsys, case):
  folder, _ = tiny
  damaged = tmp_path / "model"
  shutil.copytree(folder / "model", damaged)
  if case == "damaged index":
    (damaged / "weights" / "model.index").write_bytes(b"garbage")
  elif case == "missing data":
    for path in (damaged / "weights").glob("model.data*"):
      path.unlink()
  else:
    config = yaml.safe_load((damaged / "config.yaml").read_text())
    config["entropy"]["hidden_filters"] = [8, 8]
    (damaged / "config.yaml").write_text(yaml.safe_dump(config))
  output = tmp_path / "out.png"
  assert_main_refused(
    codec_main,
    ["decompress", "--model", damaged, folder / "good.cbx", output],
    capsys,
    re.escape(f"{damaged}: its weights cannot be read (weights/model.*: "),
    output,
  )


@pytest.mark.parametrize(
  "text,message",
  [
    ("a: &x [1, 2]\nb: *x\n", "YAML aliases are not allowed"),
    (None, "transform.num_filters: interpolation '.*' is not allowed"),  # an environment leak
    ("transform: [1\n", "not a valid YAML config"),
  ],
)
def test_unusual_yaml_is_refused(tiny, tmp_path, capsys, text, message):
  folder, _ = tiny
  hostile = _hostile_model(
    folder, tmp_path, "model", lambda c: c["transform"].update(num_filters="${oc.env:HOME}")
  )
  if text is not None:
    (hostile / "config.yaml").write_text(text)
  assert_main_refused(
    export_main,
    ["--from", hostile, "--out", tmp_path / "export"],
    capsys,
    message,
    tmp_path / "export",
  )


def test_every_configured_entropy_model_is_allowed_and_builds(tmp_path, monkeypatch):
  from cbexp import config

  names = sorted(p.stem for p in (config.CONF_DIR / "entropy").glob("*.yaml"))
  allowed = config.entropy_classes()
  assert len(allowed) == len(names)
  for name in names:
    assert build_model(compose(tiny_overrides(name))).entropy_model.name == name
  # Without conf/ (a regular install): the same classes, found in cbexp.entropy's modules.
  monkeypatch.setattr(config, "CONF_DIR", tmp_path)
  config.entropy_classes.cache_clear()
  try:
    assert config.entropy_classes() == allowed
  finally:
    config.entropy_classes.cache_clear()


# --- an export is code: graphs that reach outside the model are refused before loading ----------
class _ExportThatWritesFiles(tf.Module):
  """A SavedModel whose compress writes a file, and whose decompress reads one."""

  def __init__(self, victim):
    super().__init__()
    self.victim = victim

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def compress(self, image):
    tf.io.write_file(self.victim, "overwritten")
    return tf.strings.as_string(tf.shape(image))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def decompress(self, strings):
    return tf.io.read_file(strings[0])


def test_an_export_whose_graph_touches_files_is_refused_before_loading(tiny, tmp_path, capsys):
  folder, _ = tiny
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  evil = tmp_path / "evil_export"
  tf.saved_model.save(_ExportThatWritesFiles(str(victim)), str(evil))
  assert_main_refused(
    codec_main,
    ["compress", "--model", evil, folder / "image.png", tmp_path / "out.cbx"],
    capsys,
    r"evil_export: refused: function __inference_compress_\d+ holds the op "
    r"WriteFile, which reaches outside the model",
    tmp_path / "out.cbx",
  )
  assert victim.read_text() == "keep me"
