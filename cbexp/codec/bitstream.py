"""The ``.cbx`` file: a self-describing container for one compressed image.

Layout (all integers big-endian, unsigned), format version 3 (FORMAT_VERSION):

    offset      size  field
    0           4     magic b"\\x89CBX" (the high first byte catches 7-bit / text-mode transfers)
    4           1     format version: 3 (2: older symbol checks; 1: none; see below)
    5           1     n: length of the entropy-model name
    6           n     entropy-model name, ASCII (e.g. "charm")
    6+n         16    model fingerprint (128 bits of SHA-256 over config + weights)
    22+n        4     image height in pixels
    26+n        4     image width in pixels
    30+n        1     k: number of strings (z first, then the entropy model's)
    31+n        4k    length in bytes of each string
    31+n+4k     4k    symbol check of each string, in the same order (SYMBOL_CHECK_BYTES each)
    31+n+8k     sum   the strings, in order
    end-4       4     CRC-32 of every byte before it

A string's symbol check (``GaussianConditional.symbol_check``) is what the decoder must
reproduce, so that a decode that lost sync without an error is refused. Format 3 hashes the
string's symbols row by row, so that a decoder working on bands of rows computes it without
holding every symbol (``cbexp.models.streaming``); format 2, the same layout, hashed them all at
once (only the whole-latent decoder of a model directory checks it: ``cbexp.codec``); format 1
has no symbol checks. All three are read. Pure Python: ``read`` checks the header against the file's
size and the caller's limits before it reads any string. bpp counts the whole file.
"""

import dataclasses
import os
import pathlib
import struct
import zlib

from cbexp import files
from cbexp.errors import CbexpError

MAGIC = b"\x89CBX"
FORMAT_VERSION = 3  # written; READ_VERSIONS are read
READ_VERSIONS = (1, 2, 3)
FINGERPRINT_BYTES = 16
SYMBOL_CHECK_BYTES = 4  # cbexp.entropy.base.SYMBOL_CHECK_BYTES (a test checks)
_MAX_NAME_BYTES = 255
_MAX_STRINGS = 255
_CHECKSUM = struct.Struct(">I")
_LENGTH = struct.Struct(">I")
_SIZE = struct.Struct(">II")  # height, width
# The longest possible header: magic, version, name length, name, fingerprint, size, count,
# lengths, checks. ``read`` reads at most this much before it knows what the file announces.
MAX_HEADER_BYTES = (
  len(MAGIC)
  + 2
  + _MAX_NAME_BYTES
  + FINGERPRINT_BYTES
  + _SIZE.size
  + 1
  + (_LENGTH.size + SYMBOL_CHECK_BYTES) * _MAX_STRINGS
)


class BitstreamError(CbexpError, ValueError):
  """A .cbx file that cannot be decoded; the message says why."""


@dataclasses.dataclass(frozen=True)
class Bitstream:
  entropy_model: str
  fingerprint: str  # 32 hex characters
  height: int
  width: int
  strings: tuple  # of bytes
  checks: tuple = None  # of bytes, SYMBOL_CHECK_BYTES each, one per string (None: format 1)
  check_format: int = FORMAT_VERSION  # the format of the checks: 3, or 2 (older files)

  def __post_init__(self):
    object.__setattr__(self, "strings", tuple(bytes(s) for s in self.strings))
    if self.checks is not None:
      object.__setattr__(self, "checks", tuple(bytes(c) for c in self.checks))
    name = self.entropy_model.encode("ascii", errors="replace")
    if not 0 < len(name) <= _MAX_NAME_BYTES or not self.entropy_model.isascii():
      raise BitstreamError(
        f"entropy-model name {self.entropy_model!r} must be 1 to {_MAX_NAME_BYTES} ASCII characters"
      )
    try:
      if len(bytes.fromhex(self.fingerprint)) != FINGERPRINT_BYTES:
        raise ValueError
    except ValueError:
      raise BitstreamError(
        f"fingerprint {self.fingerprint!r} must be {2 * FINGERPRINT_BYTES} hex characters"
      ) from None
    for what, value in (("height", self.height), ("width", self.width)):
      if not 1 <= value < 2**32:
        raise BitstreamError(f"image {what} {value} is outside 1..{2**32 - 1}")
    if not 1 <= len(self.strings) <= _MAX_STRINGS:
      raise BitstreamError(f"{len(self.strings)} strings; a .cbx file holds 1 to {_MAX_STRINGS}")
    if any(len(s) >= 2**32 for s in self.strings):
      raise BitstreamError("a string longer than 4 GiB cannot be stored")
    if self.checks is not None and (
      len(self.checks) != len(self.strings)
      or any(len(c) != SYMBOL_CHECK_BYTES for c in self.checks)
    ):
      raise BitstreamError(
        f"{len(self.strings)} strings need as many symbol checks of "
        f"{SYMBOL_CHECK_BYTES} bytes, got {[len(c) for c in self.checks]}"
      )
    if self.check_format not in (2, 3):
      raise BitstreamError(f"symbol checks of format {self.check_format}: 2 or 3 exist")

  @property
  def num_pixels(self):
    return self.height * self.width

  @property
  def version(self):
    """The format version ``to_bytes`` writes: its checks' format, 1 without checks."""
    return 1 if self.checks is None else self.check_format

  def to_bytes(self):
    name = self.entropy_model.encode("ascii")
    parts = [
      MAGIC,
      bytes([self.version, len(name)]),
      name,
      bytes.fromhex(self.fingerprint),
      _SIZE.pack(self.height, self.width),
      bytes([len(self.strings)]),
    ]
    parts += [_LENGTH.pack(len(s)) for s in self.strings]
    parts += self.checks or ()
    parts += self.strings
    body = b"".join(parts)
    return body + _CHECKSUM.pack(zlib.crc32(body))

  @classmethod
  def from_bytes(cls, data):
    data = bytes(data)
    header = Header.parse(data, len(data))
    view = memoryview(data)
    body_end = len(data) - _CHECKSUM.size
    _check_crc(zlib.crc32(view[:body_end]), data[body_end:])
    strings, offset = [], header.size
    for length in header.lengths:
      strings.append(data[offset : offset + length])
      offset += length
    return header.stream(strings)


@dataclasses.dataclass(frozen=True)
class Header:
  """What a .cbx header announces (values not yet validated: the checksum comes first)."""

  name: bytes
  fingerprint: bytes
  height: int
  width: int
  lengths: tuple  # of each string, in bytes
  size: int  # of the header itself, in bytes
  checks: tuple = None  # symbol check of each string (formats 2 and 3; None: format 1)
  version: int = FORMAT_VERSION

  @property
  def file_size(self):
    """The size of the whole file this header announces."""
    return self.size + sum(self.lengths) + _CHECKSUM.size

  @classmethod
  def parse(cls, data, file_size):
    """Parses the header at the start of ``data`` (the first bytes of a file of ``file_size``
    bytes) and checks that the file has exactly the size the header announces."""
    if not file_size:
      raise BitstreamError("empty file")
    if len(data) < len(MAGIC) + 1:
      if MAGIC.startswith(data):
        raise BitstreamError(f"truncated: {len(data)} bytes, too short for a .cbx header")
      raise BitstreamError("not a .cbx file (wrong magic bytes)")
    if data[: len(MAGIC)] != MAGIC:
      raise BitstreamError(
        f"not a .cbx file (wrong magic bytes {data[: len(MAGIC)]!r}, expected {MAGIC!r})"
      )
    version = data[len(MAGIC)]
    readable = " and ".join(map(str, READ_VERSIONS))
    if version > max(READ_VERSIONS):
      raise BitstreamError(
        f"format version {version} is newer than this reader "
        f"(reads versions {readable}); update cbexp"
      )
    if version not in READ_VERSIONS:
      raise BitstreamError(
        f"unknown format version {version} (this reader reads versions {readable})"
      )

    # Layout first (every read bounds-checked), then the checksum, then the values' meaning.
    reader = _Reader(data, start=len(MAGIC) + 1, file_size=file_size)
    name = reader.take(reader.byte(), "entropy-model name")
    fingerprint = reader.take(FINGERPRINT_BYTES, "model fingerprint")
    height, width = _SIZE.unpack(reader.take(_SIZE.size, "image size"))
    count = reader.byte()
    lengths = tuple(
      _LENGTH.unpack(reader.take(_LENGTH.size, "string lengths"))[0] for _ in range(count)
    )
    checks = (
      tuple(reader.take(SYMBOL_CHECK_BYTES, "symbol checks") for _ in range(count))
      if version >= 2
      else None
    )
    header = cls(
      name=name,
      fingerprint=fingerprint,
      height=height,
      width=width,
      lengths=lengths,
      size=reader.offset,
      checks=checks,
      version=version,
    )
    expected_size = header.file_size
    if file_size < expected_size:
      raise BitstreamError(
        f"truncated or corrupted: the header announces {expected_size} "
        f"bytes, the file has {file_size}"
      )
    if file_size > expected_size:
      raise BitstreamError(
        f"corrupted: the header announces {expected_size} bytes, the file "
        f"has {file_size} (trailing data)"
      )
    return header

  def stream(self, strings):
    """The Bitstream of this header and its (checksum-verified) strings."""
    try:
      name = self.name.decode("ascii")
    except UnicodeDecodeError:
      raise BitstreamError("corrupted header: entropy-model name is not ASCII") from None
    return Bitstream(
      entropy_model=name,
      fingerprint=self.fingerprint.hex(),
      height=self.height,
      width=self.width,
      strings=tuple(strings),
      checks=self.checks,
      check_format=self.version if self.checks is not None else FORMAT_VERSION,
    )


def _check_crc(computed, stored):
  if len(stored) != _CHECKSUM.size or computed != _CHECKSUM.unpack(stored)[0]:
    raise BitstreamError("checksum mismatch: the file is corrupted")


class _Reader:
  """Bounds-checked reads from the first bytes of a file (``data``) of ``file_size`` bytes."""

  def __init__(self, data, start, file_size):
    self.data = data
    self.offset = start
    self.file_size = file_size

  def take(self, size, what):
    end = self.offset + size
    if end > len(self.data):
      raise BitstreamError(
        f"truncated: the file ends inside the {what} (at byte {self.file_size} of at least {end})"
      )
    chunk = self.data[self.offset : end]
    self.offset = end
    return chunk

  def byte(self):
    return self.take(1, "header")[0]


def bits_per_pixel(num_bytes, height, width):
  """The rate of a whole file, header and checksum included."""
  return 8.0 * num_bytes / (height * width)


def read(path, check=None):
  """-> (Bitstream, size of the file in bytes). The header is read first (at most
  MAX_HEADER_BYTES) and the file's size checked against it; then ``check(header)`` (a
  ``Header``; the caller's limits, e.g. image size) runs before any string is read; then the
  strings are read once each and the CRC computed over them as they come."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise BitstreamError(f"{path}: is a directory, expected a .cbx file")
  if not path.is_file():
    raise BitstreamError(f"{path}: no such file")
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      head = f.read(min(size, MAX_HEADER_BYTES))
      header = Header.parse(head, size)
      if check is not None:
        check(header)
      f.seek(0)
      crc = zlib.crc32(f.read(header.size))
      strings = []
      for length in header.lengths:
        strings.append(f.read(length))
        if len(strings[-1]) != length:
          raise BitstreamError("truncated while reading (the file changed)")
        crc = zlib.crc32(strings[-1], crc)
      _check_crc(crc, f.read(_CHECKSUM.size + 1))
    return header.stream(strings), size
  except ValueError as error:  # BitstreamError, or what ``check`` raises: named with the file
    raise type(error)(f"{path}: {error}") from None


def write(path, bitstream):
  """Writes a .cbx file; returns its size in bytes."""
  data = bitstream.to_bytes()
  files.write_atomic(path, data)
  return len(data)
