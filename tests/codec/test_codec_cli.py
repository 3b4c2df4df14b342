"""End to end: ``python -m cbexp.codec`` in a fresh process.

The paper configuration (untrained) round-trips Kodak images of both orientations through
compress and decompress, and every bad input ends with exit status 2, one line on stderr, no
traceback and no output file. Most bad inputs are caught before TensorFlow loads, so those
processes are short."""

import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cbexp.codec import bitstream
from cbexp.codec import savedmodel as export
from cbexp.config import compose
from cbexp.images import load_image
from cbexp.models.compression import Compressed
from helpers.codec_cli import assert_refused, run_codec


# --- the paper configuration round trip --------------------------------------------------------
@pytest.fixture(scope="module")
def paper(model_factory, tmp_path_factory):
  """The paper configuration (config defaults: ms2020 + ChARM), untrained, and its export."""
  model = model_factory([])
  path = tmp_path_factory.mktemp("paper") / "charm_export"
  export.save(model, compose([]), path)
  return model, path


def printed_bpp(stdout):
  return re.search(r"bpp (\d+\.\d{6})", stdout).group(1)


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("kodim01.png", (512, 768)), ("kodim04.png", (768, 512))])
def test_paper_model_round_trip_on_the_command_line(paper, kodak_dir, tmp_path, name, shape):
  model, model_path = paper
  image = load_image(kodak_dir / name)
  assert image.shape == shape + (3,)  # one image per orientation
  pixels = shape[0] * shape[1]

  compressed = run_codec(
    "compress", "--model", model_path, kodak_dir / name, "image.cbx", cwd=tmp_path
  )
  assert compressed.returncode == 0, compressed.stderr
  size = (tmp_path / "image.cbx").stat().st_size
  assert printed_bpp(compressed.stdout) == f"{8 * size / pixels:.6f}"
  stream, _ = bitstream.read(tmp_path / "image.cbx")
  assert (stream.entropy_model, stream.height, stream.width) == ("charm", *shape)
  in_memory = model.compress(image)
  assert list(stream.strings) == in_memory.strings  # the command's encoder is the model's

  decompressed = run_codec(
    "decompress", "--model", model_path, "image.cbx", "decoded.png", cwd=tmp_path
  )
  assert decompressed.returncode == 0, decompressed.stderr
  assert printed_bpp(decompressed.stdout) == f"{8 * size / pixels:.6f}"
  decoded = load_image(tmp_path / "decoded.png")
  expected = model.decompress(Compressed(list(stream.strings), shape)).numpy()
  np.testing.assert_array_equal(decoded, expected)  # the in-memory decoder's image, exactly


# --- refusals ---------------------------------------------------------------------------------
def test_bfloat16_decoding_option(tiny_files, tmp_path):
  """--precision bfloat16: same stream, a slightly different image; an export keeps its own
  precision and refuses another one in one line."""
  from PIL import Image

  folder, stream = tiny_files
  decoded = {}
  for precision in ("float32", "bfloat16"):
    result = run_codec(
      "decompress",
      "--model",
      folder / "model",
      "--precision",
      precision,
      folder / "good.cbx",
      f"{precision}.png",
      cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    decoded[precision] = np.asarray(Image.open(tmp_path / f"{precision}.png"))
  assert not np.array_equal(decoded["float32"], decoded["bfloat16"])  # bf16 really ran
  assert float(tf.image.psnr(decoded["float32"], decoded["bfloat16"], 255)) > 40.0
  exported = subprocess.run(
    [
      sys.executable,
      "-m",
      "cbexp.export",
      "--from",
      folder / "model",
      "--out",
      tmp_path / "bf16_export",
      "--precision",
      "bfloat16",
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert exported.returncode == 0, exported.stderr
  result = run_codec(
    "decompress",
    "--model",
    tmp_path / "bf16_export",
    folder / "good.cbx",
    "export.png",
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  np.testing.assert_array_equal(
    np.asarray(Image.open(tmp_path / "export.png")), decoded["bfloat16"]
  )
  result = run_codec(
    "decompress",
    "--model",
    tmp_path / "bf16_export",
    "--precision",
    "float32",
    folder / "good.cbx",
    "refused.png",
    cwd=tmp_path,
  )
  assert_refused(result, tmp_path / "refused.png", "this export decodes in bfloat16")


def test_decoding_with_other_weights_is_refused(tiny_files, tmp_path):
  folder, stream = tiny_files
  result = run_codec(
    "decompress", "--model", folder / "other_model", folder / "good.cbx", "out.png", cwd=tmp_path
  )
  assert_refused(
    result,
    tmp_path / "out.png",
    f"model mismatch: .*fingerprint {stream.fingerprint}.* fingerprint [0-9a-f]{{32}}",
  )


def _damaged(data, stream):
  """name -> (bytes, expected message) for every kind of damaged .cbx file."""
  header = len(data) - 4 - sum(len(s) for s in stream.strings)
  height_at = 6 + len(stream.entropy_model) + 16
  files = {
    "empty": (b"", "empty file"),
    "wrong_magic": (b"\x89PNG" + data[4:], "not a .cbx file"),
    "future_version": (
      data[:4] + bytes([bitstream.FORMAT_VERSION + 1]) + data[5:],
      f"format version {bitstream.FORMAT_VERSION + 1} is newer",
    ),
    "flipped_bit_header": (_flip(data, height_at + 3), "checksum mismatch"),
    "flipped_bit_payload": (_flip(data, header + 5), "checksum mismatch"),
  }
  for length in (3, 12, header - 1, header + 2, len(data) - 1):
    files[f"truncated_{length}"] = (data[:length], "truncated")
  return files


def _flip(data, position):
  damaged = bytearray(data)
  damaged[position] ^= 0x04
  return bytes(damaged)


DAMAGE = [
  "empty",
  "wrong_magic",
  "future_version",
  "flipped_bit_header",
  "flipped_bit_payload",
  "truncated_3",
  "truncated_12",
  "truncated_header-1",
  "truncated_header+2",
  "truncated_end-1",
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_cbx_is_refused(tiny_files, tmp_path, damage):
  folder, stream = tiny_files
  data = (folder / "good.cbx").read_bytes()
  files = _damaged(data, stream)
  header = len(data) - 4 - sum(len(s) for s in stream.strings)
  key = (
    damage.replace("header-1", str(header - 1))
    .replace("header+2", str(header + 2))
    .replace("end-1", str(len(data) - 1))
  )
  content, message = files[key]
  (tmp_path / "in.cbx").write_bytes(content)
  result = run_codec("decompress", "--model", folder / "model", "in.cbx", "out.png", cwd=tmp_path)
  assert_refused(result, tmp_path / "out.png", message)


def test_missing_model_path_is_refused(tiny_files, tmp_path):
  folder, _ = tiny_files
  result = run_codec(
    "decompress",
    "--model",
    tmp_path / "no_such_model",
    folder / "good.cbx",
    "out.png",
    cwd=tmp_path,
  )
  assert_refused(result, tmp_path / "out.png", "no_such_model: no such model")
  result = run_codec(
    "compress", "--model", tmp_path / "no_such_model", folder / "good.cbx", "out.cbx", cwd=tmp_path
  )
  assert_refused(result, tmp_path / "out.cbx", "no_such_model: no such model")


@pytest.mark.parametrize(
  "content,message",
  [
    (b"", "empty.png: empty file"),
    (b"this is not an image\n", "not_an_image.png: not a readable image"),
  ],
)
def test_bad_image_file_is_refused(tiny_files, tmp_path, content, message):
  folder, _ = tiny_files
  name = "empty.png" if not content else "not_an_image.png"
  (tmp_path / name).write_bytes(content)
  result = run_codec("compress", "--model", folder / "model", name, "out.cbx", cwd=tmp_path)
  assert_refused(result, tmp_path / "out.cbx", message)


def test_image_above_the_pixel_limit_is_refused(tiny_files, tmp_path):
  from PIL import Image

  folder, _ = tiny_files
  Image.new("RGB", (30, 20)).save(tmp_path / "big.png")
  result = run_codec(
    "compress",
    "--model",
    folder / "model",
    "--max-pixels",
    "500",
    "big.png",
    "out.cbx",
    cwd=tmp_path,
  )
  assert_refused(
    result,
    tmp_path / "out.cbx",
    "30x20 pixels, coded as 64x64 = 4096 pixels .* is above the limit of 500",
  )


def test_usage_errors_are_one_line(tmp_path):
  result = run_codec("compress", "--model", "m", cwd=tmp_path)
  assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
  assert "required: input, output" in result.stderr


@pytest.mark.parametrize(
  "argv, returned",
  [
    (["compress", "in.png", "out.cbx"], True),
    (["decompress", "in.cbx", "out.png", "--memory-budget", "64"], True),
    (["compress", "in.png", "out.cbx", "--memory-budget", "0"], False),  # untiled: speed
    (["eval", "images"], False),  # its times are the codec's speed
  ],
)
def test_file_coding_within_a_budget_returns_freed_memory(monkeypatch, tmp_path, argv, returned):
  """cbexp.cli.common.return_freed_memory (tests/evaluation/test_memory.py: what it does) runs
  before the command, for compress and decompress within a memory budget."""
  from cbexp.cli import codec as codec_cli

  calls = []
  monkeypatch.setattr(codec_cli, "return_freed_memory", lambda: calls.append(argv[0]))
  monkeypatch.setattr(codec_cli, "run_command", lambda prog, run, args: 0)
  monkeypatch.chdir(tmp_path)
  assert codec_cli.main([*argv, "--model", "m"]) == 0
  assert calls == ([argv[0]] if returned else [])
