"""A .cbx file and its model, written before the layout change (at a21b048 plus the strings-check
fix) and kept as test data: the file must decode to the same pixels, and the same model and image
must give the same bytes, whatever the code around the models becomes."""

import pathlib

import numpy as np
from PIL import Image

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
  assert (tmp_path / "crop.cbx").read_bytes() == (FIXTURE / "crop.cbx").read_bytes()
