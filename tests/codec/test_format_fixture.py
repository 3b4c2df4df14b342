"""A .cbx file and its model, written before the layout change (at a21b048 plus the strings-check
fix) and kept as test data: the file must decode to the same pixels, and the same model and image
must give the same strings, whatever the code around the models becomes. The file is of format 2;
cbexp now writes format 3, whose only differences are the version byte, the symbol checks (row by
row) and so the CRC (cbexp.codec.bitstream)."""

import dataclasses
import pathlib

import numpy as np
from PIL import Image

from cbexp.codec import bitstream
from helpers.codec_cli import run_codec

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "format2"


def test_a_file_written_before_decodes_to_the_same_pixels(tmp_path):
  result = run_codec(
    "decompress",
    "--model",
    FIXTURE / "model",
    FIXTURE / "crop.cbx",
    tmp_path / "decoded.png",
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  np.testing.assert_array_equal(
    np.asarray(Image.open(tmp_path / "decoded.png")),
    np.asarray(Image.open(FIXTURE / "decoded.png")),
  )


def test_the_same_model_and_image_give_the_same_bytes(tmp_path):
  result = run_codec(
    "compress",
    "--model",
    FIXTURE / "model",
    FIXTURE / "crop.png",
    tmp_path / "crop.cbx",
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  new, _ = bitstream.read(tmp_path / "crop.cbx")
  old, _ = bitstream.read(FIXTURE / "crop.cbx")
  assert old.version == 2 and new.version == 3 and new.checks != old.checks
  assert dataclasses.replace(new, checks=old.checks, check_format=2) == old
