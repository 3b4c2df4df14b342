"""The ``.cbx`` file: a self-describing container for one compressed image.

Layout (all integers big-endian, unsigned):

    offset      size  field
    0           4     magic b"\\x89CBX" (the high first byte catches 7-bit / text-mode transfers)
    4           1     format version (FORMAT_VERSION)
    5           1     n: length of the entropy-model name
    6           n     entropy-model name, ASCII (e.g. "charm")
    6+n         16    model fingerprint (128 bits of SHA-256 over config + weights)
    22+n        4     image height in pixels
    26+n        4     image width in pixels
    30+n        1     k: number of strings (z first, then the entropy model's)
    31+n        4k    length in bytes of each string
    31+n+4k     sum   the strings, in order
    end-4       4     CRC-32 of every byte before it

Pure Python (struct + zlib). ``Bitstream.from_bytes`` validates everything and raises
``BitstreamError`` with a message naming the problem; it never returns a partly parsed stream.
bpp counts the *whole* file: ``bits_per_pixel(len(data), height, width)``.
"""
import dataclasses
import os
import pathlib
import secrets
import struct
import zlib

MAGIC = b"\x89CBX"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 16
_MAX_NAME_BYTES = 255
_MAX_STRINGS = 255
_CHECKSUM = struct.Struct(">I")
_LENGTH = struct.Struct(">I")
_SIZE = struct.Struct(">II")  # height, width


class BitstreamError(ValueError):
  """A .cbx file that cannot be decoded; the message says why."""


@dataclasses.dataclass(frozen=True)
class Bitstream:
  entropy_model: str
  fingerprint: str  # 32 hex characters
  height: int
  width: int
  strings: tuple  # of bytes

  def __post_init__(self):
    object.__setattr__(self, "strings", tuple(bytes(s) for s in self.strings))
    name = self.entropy_model.encode("ascii", errors="replace")
    if not 0 < len(name) <= _MAX_NAME_BYTES or not self.entropy_model.isascii():
      raise BitstreamError(f"entropy-model name {self.entropy_model!r} must be 1 to "
                           f"{_MAX_NAME_BYTES} ASCII characters")
    try:
      if len(bytes.fromhex(self.fingerprint)) != FINGERPRINT_BYTES:
        raise ValueError
    except ValueError:
      raise BitstreamError(f"fingerprint {self.fingerprint!r} must be "
                           f"{2 * FINGERPRINT_BYTES} hex characters") from None
    for what, value in (("height", self.height), ("width", self.width)):
      if not 1 <= value < 2**32:
        raise BitstreamError(f"image {what} {value} is outside 1..{2**32 - 1}")
    if not 1 <= len(self.strings) <= _MAX_STRINGS:
      raise BitstreamError(f"{len(self.strings)} strings; a .cbx file holds 1 to {_MAX_STRINGS}")
    if any(len(s) >= 2**32 for s in self.strings):
      raise BitstreamError("a string longer than 4 GiB cannot be stored")

  @property
  def num_pixels(self):
    return self.height * self.width

  def to_bytes(self):
    name = self.entropy_model.encode("ascii")
    parts = [MAGIC, bytes([FORMAT_VERSION, len(name)]), name, bytes.fromhex(self.fingerprint),
             _SIZE.pack(self.height, self.width), bytes([len(self.strings)])]
    parts += [_LENGTH.pack(len(s)) for s in self.strings]
    parts += self.strings
    body = b"".join(parts)
    return body + _CHECKSUM.pack(zlib.crc32(body))

  @classmethod
  def from_bytes(cls, data):
    data = bytes(data)
    if not data:
      raise BitstreamError("empty file")
    if len(data) < len(MAGIC) + 1:
      if MAGIC.startswith(data):
        raise BitstreamError(f"truncated: {len(data)} bytes, too short for a .cbx header")
      raise BitstreamError("not a .cbx file (wrong magic bytes)")
    if data[:len(MAGIC)] != MAGIC:
      raise BitstreamError(f"not a .cbx file (wrong magic bytes {data[:len(MAGIC)]!r}, "
                           f"expected {MAGIC!r})")
    version = data[len(MAGIC)]
    if version > FORMAT_VERSION:
      raise BitstreamError(f"format version {version} is newer than this reader "
                           f"(reads version {FORMAT_VERSION}); update cbexp")
    if version != FORMAT_VERSION:
      raise BitstreamError(f"unknown format version {version} (this reader reads "
                           f"{FORMAT_VERSION})")

    # Layout first (every read bounds-checked), then the checksum, then the values' meaning.
    reader = _Reader(data, start=len(MAGIC) + 1)
    name = reader.take(reader.byte(), "entropy-model name")
    fingerprint = reader.take(FINGERPRINT_BYTES, "model fingerprint")
    height, width = _SIZE.unpack(reader.take(_SIZE.size, "image size"))
    count = reader.byte()
    lengths = [_LENGTH.unpack(reader.take(_LENGTH.size, "string lengths"))[0]
               for _ in range(count)]
    expected_size = reader.offset + sum(lengths) + _CHECKSUM.size
    if len(data) < expected_size:
      raise BitstreamError(f"truncated or corrupted: the header announces {expected_size} "
                           f"bytes, the file has {len(data)}")
    if len(data) > expected_size:
      raise BitstreamError(f"corrupted: the header announces {expected_size} bytes, the file "
                           f"has {len(data)} (trailing data)")
    body, (checksum,) = data[:-_CHECKSUM.size], _CHECKSUM.unpack(data[-_CHECKSUM.size:])
    if zlib.crc32(body) != checksum:
      raise BitstreamError("checksum mismatch: the file is corrupted")
    strings = []
    for length in lengths:
      strings.append(reader.take(length, "strings"))

    try:
      name = name.decode("ascii")
    except UnicodeDecodeError:
      raise BitstreamError("corrupted header: entropy-model name is not ASCII") from None
    return cls(entropy_model=name, fingerprint=fingerprint.hex(), height=height, width=width,
               strings=tuple(strings))


class _Reader:

  def __init__(self, data, start):
    self.data = data
    self.offset = start

  def take(self, size, what):
    end = self.offset + size
    if end > len(self.data):
      raise BitstreamError(f"truncated: the file ends inside the {what} "
                           f"(at byte {len(self.data)} of at least {end})")
    chunk = self.data[self.offset:end]
    self.offset = end
    return chunk

  def byte(self):
    return self.take(1, "header")[0]


def bits_per_pixel(num_bytes, height, width):
  """The rate of a whole file, header and checksum included."""
  return 8.0 * num_bytes / (height * width)


def read(path):
  """-> (Bitstream, size of the file in bytes)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise BitstreamError(f"{path}: no such file")
  data = path.read_bytes()
  try:
    return Bitstream.from_bytes(data), len(data)
  except BitstreamError as error:
    raise BitstreamError(f"{path}: {error}") from None


def write_atomic(path, data):
  """Writes ``data`` to a temporary file beside ``path`` and renames it into place, so that a
  failure never leaves a partial or stale output file."""
  path = pathlib.Path(path)
  temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
  # os.open with 0o666 honours the umask (tempfile.mkstemp would make the output owner-only).
  handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def write(path, bitstream):
  """Writes a .cbx file; returns its size in bytes."""
  data = bitstream.to_bytes()
  write_atomic(path, data)
  return len(data)
