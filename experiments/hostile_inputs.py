"""Measures how ``python -m cbexp.codec`` meets hostile input: for each crafted file, the exit
status, the number of stderr lines, whether a traceback or an output file appeared, and the
process's peak resident memory (GNU time's %M).

    python experiments/hostile_inputs.py [work folder]

A tiny checkerboard model (untrained, seed 0) and a legit 40x50 image give the reference; every
other row is a hostile input the codec must refuse in one line. tests/test_hostile.py asserts the
same cases; this script prints the figures.
"""

import os
import pathlib
import struct
import subprocess
import sys
import tempfile

import numpy as np


def png(path, width, height):
  """A black 8-bit gray PNG written from its rows (a few KB even at 16777216 x 1)."""
  import zlib

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", header)
    + chunk(b"IDAT", zlib.compress(b"\0" * (height * (width + 1)), 9))
    + chunk(b"IEND", b"")
  )
  return path


def main():
  import tensorflow as tf
  from PIL import Image

  from cbexp.codec import bitstream
  from cbexp.codec.bitstream import Bitstream
  from cbexp.codec.codec import Codec
  from cbexp.codec.model_dir import save_model_dir
  from cbexp.config import build_model, compose

  work = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="hostile-"))
  work.mkdir(parents=True, exist_ok=True)
  cfg = compose(["transform=tiny", "entropy=checkerboard", "entropy.hidden_filters=[16,16]"])
  tf.keras.utils.set_random_seed(0)
  model = build_model(cfg)
  model.build_coders()
  save_model_dir(model, cfg, work / "model")
  image = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  Image.fromarray(image).save(work / "image.png")
  stream = Codec.from_model(model, cfg).encode(image)
  bitstream.write(work / "good.cbx", stream)

  def crafted(name, **changes):
    values = dict(
      entropy_model=stream.entropy_model,
      fingerprint=stream.fingerprint,
      height=stream.height,
      width=stream.width,
      strings=stream.strings,
    )
    values.update(changes)
    (work / name).write_bytes(Bitstream(**values).to_bytes())
    return name

  z, anchors, non_anchors = stream.strings
  noise = np.random.default_rng(1).bytes
  header = Bitstream(
    entropy_model=stream.entropy_model,
    fingerprint=stream.fingerprint,
    height=4096,
    width=4096,
    strings=(b"", b"", b""),
  ).to_bytes()[:-4]
  with open(work / "huge.cbx", "wb") as f:  # 1 GiB, sparse, claiming 4096 x 4096
    f.write(header[:-12] + struct.pack(">III", 2**30, 0, 0))
    f.truncate(len(header) + 2**30 + 4)
  cases = [
    ("legit .cbx (reference)", "decompress", "good.cbx"),
    (
      "59-byte .cbx claiming 16777216x1",
      "decompress",
      crafted("tall.cbx", height=1, width=2**24, strings=(b"", b"", b"")),
    ),
    ("1 GiB .cbx claiming 4096x4096", "decompress", "huge.cbx"),
    ("PNG 16777216x1", "compress", png(work / "wide.png", 2**24, 1).name),
    ("PNG 1048576x1", "compress", png(work / "wide2.png", 2**20, 1).name),
    ("empty y string", "decompress", crafted("empty_y.cbx", strings=(z, b"", non_anchors))),
    ("all strings empty", "decompress", crafted("empty.cbx", strings=(b"", b"", b""))),
    (
      "trailing byte in z",
      "decompress",
      crafted("trail.cbx", strings=(z + b"\x17", anchors, non_anchors)),
    ),
    (
      "random y bytes",
      "decompress",
      crafted("random_y.cbx", strings=(z, noise(len(anchors)), non_anchors)),
    ),
    (
      "random bytes everywhere",
      "decompress",
      crafted("random.cbx", strings=tuple(noise(len(s)) for s in stream.strings)),
    ),
    (
      "header claims 4096x4096, strings of 40x50",
      "decompress",
      crafted("claims.cbx", height=4096, width=4096),
    ),
    (
      "header claims 400x500, strings of 40x50",
      "decompress",
      crafted("claims2.cbx", height=400, width=500),
    ),
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  print("| input | exit | stderr lines | traceback | output left | peak RSS (MB) |")
  print("|---|---|---|---|---|---|")
  for label, command, source in cases:
    output = work / ("out.png" if command == "decompress" else "out.cbx")
    output.unlink(missing_ok=True)
    result = subprocess.run(
      [
        "/usr/bin/time",
        "-f",
        "%M",
        sys.executable,
        "-m",
        "cbexp.codec",
        command,
        "--model",
        str(work / "model"),
        str(work / source),
        str(output),
      ],
      cwd=work,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
    )
    lines = [
      line
      for line in result.stderr.strip().splitlines()
      if not line.startswith("Command exited with non-zero status")
    ]  # GNU time's
    peak_kb = int(lines.pop())  # GNU time's %M
    print(
      f"| {label} | {result.returncode} | {len(lines)} | "
      f"{'yes' if any('Traceback' in line for line in lines) else 'no'} | "
      f"{'yes' if output.exists() else 'no'} | {peak_kb / 1024:.0f} |"
    )
    if result.returncode:
      print(f"|   {lines[-1][:150] if lines else ''} ||||||")  # the refusal
  (work / "huge.cbx").unlink()  # 1 GiB apparent size


if __name__ == "__main__":
  main()
