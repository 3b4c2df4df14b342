"""Issue 4: the .cbx container parses only what it wrote; every kind of damage is a clear error."""

import dataclasses
import struct
import zlib

import pytest

from cbexp.codec import bitstream
from cbexp.codec.bitstream import FORMAT_VERSION, MAGIC, Bitstream, BitstreamError

FINGERPRINT = "0123456789abcdef0123456789abcdef"
CHECKS = (b"\x01\x02\x03\x04", b"\xa0\xb0\xc0\xd0", b"\xff\x00\xff\x00")


def make_stream(
  strings=(b"zz", b"\x00\x01\x02anchors", b"non-anchors\xff"),
  name="checkerboard",
  height=512,
  width=768,
  checks=CHECKS,
):
  """A format-2 stream (with symbol checks, one per string); ``checks=None``: format 1."""
  if checks is not None:
    checks = checks[: len(strings)] + tuple(
      bytes([i, 0, 0, 7]) for i in range(len(strings) - len(checks))
    )
  return Bitstream(
    entropy_model=name,
    fingerprint=FINGERPRINT,
    height=height,
    width=width,
    strings=strings,
    checks=checks,
  )


def header_size(stream):
  per_string = 4 if stream.checks is None else 8  # length (+ symbol check)
  return len(MAGIC) + 2 + len(stream.entropy_model) + 16 + 8 + 1 + per_string * len(stream.strings)


def test_round_trip_and_documented_layout():
  stream = make_stream()
  data = stream.to_bytes()
  assert Bitstream.from_bytes(data) == stream
  # The layout table of the module docstring, field by field.
  n = len("checkerboard")
  assert FORMAT_VERSION == 3 and stream.version == 3
  assert data[:4] == b"\x89CBX" and data[4] == 3 and data[5] == n
  assert data[6 : 6 + n] == b"checkerboard"
  assert data[6 + n : 22 + n] == bytes.fromhex(FINGERPRINT)
  assert struct.unpack(">II", data[22 + n : 30 + n]) == (512, 768)
  assert data[30 + n] == 3
  lengths = struct.unpack(">III", data[31 + n : 43 + n])
  assert list(lengths) == [len(s) for s in stream.strings]
  assert data[43 + n : 55 + n] == b"".join(CHECKS)  # 31+n+4k: the symbol checks
  assert data[55 + n : -4] == b"".join(stream.strings)  # 31+n+8k: the strings
  assert struct.unpack(">I", data[-4:])[0] == zlib.crc32(data[:-4])
  assert len(data) == header_size(stream) + sum(lengths) + 4


def test_version_2_is_the_same_layout_and_keeps_its_check_format():
  """Format 2 (symbol checks of the whole string) and 3 (row by row) differ only in the version
  byte (and so the CRC): a file of either reads back with its checks' format."""
  stream = make_stream(checks=CHECKS)
  old = dataclasses.replace(stream, check_format=2)
  data, old_data = stream.to_bytes(), old.to_bytes()
  assert old.version == 2 and old_data[4] == 2
  assert old_data[:4] + old_data[5:-4] == data[:4] + data[5:-4]
  assert Bitstream.from_bytes(old_data) == old and Bitstream.from_bytes(data) == stream
  assert Bitstream.from_bytes(old_data).check_format == 2
  with pytest.raises(BitstreamError, match="symbol checks of format 4: 2 or 3 exist"):
    dataclasses.replace(stream, check_format=4)


def test_version_1_layout_is_still_written_and_read():
  """A stream without symbol checks is format 1: the layout before format 2 (no checks)."""
  stream = make_stream(checks=None)
  data = stream.to_bytes()
  n = len("checkerboard")
  assert stream.version == 1 and data[4] == 1
  assert data[43 + n : -4] == b"".join(stream.strings)  # the strings right after the lengths
  assert len(data) == header_size(stream) + sum(len(s) for s in stream.strings) + 4
  assert Bitstream.from_bytes(data) == stream
  assert make_stream().to_bytes() != data and len(make_stream().to_bytes()) == len(data) + 12


def test_symbol_checks_must_match_the_strings():
  with pytest.raises(BitstreamError, match="as many symbol checks"):
    Bitstream(
      entropy_model="charm",
      fingerprint=FINGERPRINT,
      height=4,
      width=4,
      strings=(b"a", b"b"),
      checks=(b"1234",),
    )
  with pytest.raises(BitstreamError, match="symbol checks of 4 bytes"):
    Bitstream(
      entropy_model="charm",
      fingerprint=FINGERPRINT,
      height=4,
      width=4,
      strings=(b"a",),
      checks=(b"12345",),
    )


def test_symbol_check_size_is_the_graphs():
  from cbexp.entropy.base import SYMBOL_CHECK_BYTES

  assert bitstream.SYMBOL_CHECK_BYTES == SYMBOL_CHECK_BYTES


def test_bpp_counts_the_whole_file():
  assert bitstream.bits_per_pixel(1000, 10, 20) == 8 * 1000 / 200


def test_empty_strings_and_one_pixel_images_round_trip():
  stream = make_stream(strings=(b"", b"x"), height=1, width=1)
  assert Bitstream.from_bytes(stream.to_bytes()) == stream


def test_empty_file():
  with pytest.raises(BitstreamError, match="empty file"):
    Bitstream.from_bytes(b"")


def test_every_truncation_is_refused():
  data = make_stream().to_bytes()
  for length in range(1, len(data)):
    with pytest.raises(BitstreamError, match="truncated|corrupted"):
      Bitstream.from_bytes(data[:length])


def test_trailing_bytes_are_refused():
  with pytest.raises(BitstreamError, match="trailing"):
    Bitstream.from_bytes(make_stream().to_bytes() + b"\x00")


def test_every_single_bit_flip_is_refused():
  stream = make_stream()
  data = stream.to_bytes()
  header = header_size(stream)
  for position in range(len(data)):
    for bit in range(8):
      damaged = bytearray(data)
      damaged[position] ^= 1 << bit
      with pytest.raises(BitstreamError):
        Bitstream.from_bytes(bytes(damaged))
  # A flip in the payload (or in a header field without structure) is a checksum error.
  for position in (header + 1, len(data) - 6, header - 30):
    damaged = bytearray(data)
    damaged[position] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum mismatch"):
      Bitstream.from_bytes(bytes(damaged))


def test_wrong_magic():
  data = make_stream().to_bytes()
  with pytest.raises(BitstreamError, match="not a .cbx file"):
    Bitstream.from_bytes(b"\x89PNG" + data[4:])
  with pytest.raises(BitstreamError, match="not a .cbx file"):
    Bitstream.from_bytes(b"hello")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 255])
def test_future_version_is_refused_by_name(version):
  assert FORMAT_VERSION + 1 == 4
  data = bytearray(make_stream().to_bytes())
  data[4] = version
  with pytest.raises(BitstreamError, match=f"format version {version} is newer"):
    Bitstream.from_bytes(bytes(data))


def test_version_zero_is_refused():
  data = bytearray(make_stream().to_bytes())
  data[4] = 0
  with pytest.raises(BitstreamError, match="unknown format version 0 .*reads versions 1 and 2"):
    Bitstream.from_bytes(bytes(data))


def test_every_truncation_of_a_version_1_file_is_refused():
  data = make_stream(checks=None).to_bytes()
  for length in range(1, len(data)):
    with pytest.raises(BitstreamError, match="truncated|corrupted"):
      Bitstream.from_bytes(data[:length])


def test_string_count_change_is_refused():
  """A consistent-looking header with one string fewer (lengths and CRC recomputed) parses:
  it is the codec that refuses it against the model (see test_codec)."""
  stream = make_stream()
  data = stream.to_bytes()
  damaged = bytearray(data)
  count_at = header_size(stream) - 8 * len(stream.strings) - 1
  damaged[count_at] = 2  # claims 2 strings, CRC not updated
  with pytest.raises(BitstreamError):
    Bitstream.from_bytes(bytes(damaged))
  fewer = make_stream(strings=stream.strings[:2])
  assert len(Bitstream.from_bytes(fewer.to_bytes()).strings) == 2


@pytest.mark.parametrize(
  "field,value",
  [
    ("entropy_model", ""),
    ("entropy_model", "é"),
    ("fingerprint", "abc"),
    ("height", 0),
    ("width", -3),
    ("strings", ()),
  ],
)
def test_invalid_fields_are_refused_when_writing(field, value):
  values = dict(entropy_model="charm", fingerprint=FINGERPRINT, height=4, width=4, strings=(b"a",))
  values[field] = value
  with pytest.raises(BitstreamError):
    Bitstream(**values)


def test_write_and_read_files(tmp_path):
  stream = make_stream()
  path = tmp_path / "image.cbx"
  size = bitstream.write(path, stream)
  assert size == path.stat().st_size
  assert bitstream.read(path) == (stream, size)
  assert [p.name for p in tmp_path.iterdir()] == ["image.cbx"]  # no temporary left
  with pytest.raises(BitstreamError, match="no such file"):
    bitstream.read(tmp_path / "missing.cbx")
  (tmp_path / "bad.cbx").write_bytes(path.read_bytes()[:-1])
  with pytest.raises(BitstreamError, match="bad.cbx: truncated"):
    bitstream.read(tmp_path / "bad.cbx")
  old = make_stream(checks=None)  # format 1 files are read too
  bitstream.write(tmp_path / "old.cbx", old)
  assert bitstream.read(tmp_path / "old.cbx")[0] == old


def test_atomic_write_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
  target = tmp_path / "out.cbx"

  def failing_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(bitstream.os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    bitstream.write(target, make_stream())
  assert list(tmp_path.iterdir()) == []
