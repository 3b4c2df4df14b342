"""What the symbol checks of .cbx format 2 cost (issue 13, item 2): bytes and bpp added per file
on the Kodak images, and the decoding time with and without computing the checks, side by side
in one process (the two decoders alternate image by image; median over images after a warm-up
per shape).

    CBEXP_KODAK_DIR=/path/to/kodak python experiments/symbol_check_cost.py [overrides...]

e.g. ``entropy=charm`` (the paper configuration, untrained) or ``transform=tiny entropy=charm
entropy.hidden_filters=[16,16]``; ``--images N`` codes the first N images only. The decoder
"without" is the same model and weights traced with a symbol check that computes nothing (zeros):
the difference is the fingerprinting, nothing else. Sizes: the same stream written as format 2
and as format 1 (``checks=None``).
"""

import argparse
import dataclasses
import os
import pathlib
import time

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*")
  parser.add_argument("--images", type=int, default=24)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  import tensorflow as tf

  from cbexp.codec.codec import Codec
  from cbexp.config import build_model, compose
  from cbexp.entropy.base import SYMBOL_CHECK_BYTES, GaussianConditional
  from cbexp.images import list_images, load_image

  cfg = compose(args.overrides)
  tf.keras.utils.set_random_seed(args.seed)
  model = build_model(cfg)
  model.build_coders()
  with_checks = Codec.from_model(model, cfg, "with checks")
  paths = list_images(os.environ["CBEXP_KODAK_DIR"])[: args.images]
  images = [load_image(p) for p in paths]

  shapes = {im.shape: im for im in images}.values()
  streams = [with_checks.encode(image) for image in shapes]  # traced with the checks
  for stream in streams:
    with_checks.decode(stream)
  original = GaussianConditional.__dict__["symbol_check"]
  GaussianConditional.symbol_check = staticmethod(
    lambda *parts: tf.zeros([tf.shape(parts[0])[0], SYMBOL_CHECK_BYTES], tf.uint8)
  )
  try:
    without = Codec.from_model(model, cfg, "without checks")
    for stream in streams:  # traced without
      without.decode(dataclasses.replace(stream, checks=None))
  finally:
    GaussianConditional.symbol_check = original

  rows = []
  for path, image in zip(paths, images):
    stream = with_checks.encode(image)
    v2, v1 = len(stream.to_bytes()), len(dataclasses.replace(stream, checks=None).to_bytes())
    without_checks = dataclasses.replace(stream, checks=None)  # its checks are zeros
    times = {}
    for codec in (with_checks, without) if len(rows) % 2 == 0 else (without, with_checks):
      if not rows or image.shape != images[len(rows) - 1].shape:
        codec.decode(stream if codec is with_checks else without_checks)  # warm-up per shape
      start = time.perf_counter()
      decoded = codec.decode(stream if codec is with_checks else without_checks)
      times[codec.source] = time.perf_counter() - start
    np.testing.assert_array_equal(decoded, with_checks.decode(stream))
    pixels = image.shape[0] * image.shape[1]
    rows.append(
      (
        pathlib.Path(path).name,
        len(stream.strings),
        v2 - v1,
        8 * (v2 - v1) / pixels,
        8 * v2 / pixels,
        times["with checks"],
        times["without checks"],
      )
    )
    print(
      f"{rows[-1][0]}  strings {rows[-1][1]}  +{rows[-1][2]} bytes  +{rows[-1][3]:.6f} bpp "
      f"(file {rows[-1][4]:.4f} bpp)  decode {rows[-1][5]:.3f} s with, {rows[-1][6]:.3f} s "
      "without checks",
      flush=True,
    )
  added = np.array([r[2] for r in rows])
  bpp = np.array([r[3] for r in rows])
  with_s, without_s = np.array([r[5] for r in rows]), np.array([r[6] for r in rows])
  print(
    f"{cfg.entropy.name} ({' '.join(args.overrides) or 'paper configuration'}), "
    f"{len(rows)} images: +{added.min()}..{added.max()} bytes per file, +{bpp.mean():.6f} bpp "
    f"mean; decode median {np.median(with_s):.3f} s with checks, {np.median(without_s):.3f} s "
    f"without ({np.median(with_s / without_s):.3f}x, median of per-image ratios); "
    f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
  )


if __name__ == "__main__":
  main()
