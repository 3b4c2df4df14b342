"""cbexp memory (cbexp.evaluation.memory) on a tiny model: each measurement's process work,
in this process; the table's comparisons with the untiled run. Peak memory and time are not
asserted (the benchmark command reports them); what they are measured on is."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from cbexp.codec import bitstream
from cbexp.codec.model_dir import save_model_dir
from cbexp.config import build_model, compose
from cbexp.evaluation import memory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, kodak_dir):
  tf.keras.utils.set_random_seed(2)
  cfg = compose(["entropy=checkerboard", "transform=tiny"])
  model = build_model(cfg)
  model.build_coders()
  return save_model_dir(model, cfg, tmp_path_factory.mktemp("memory") / "model")


def worker_spec(model_dir, kodak_dir, path, **changes):
  """A measurement's spec (``memory.run_all`` gives the worker one) for the tiny model."""
  spec = {
    "ref": str(model_dir),
    "budget": 1,
    "height": 128,
    "width": 192,
    "images": str(kodak_dir),
    "max_pixels": 2**26,
    "threads": 0,
    "repeats": 1,
    "file": str(path),
    "operation": "compress",
  }
  return {**spec, **changes}


def test_the_mosaic_has_the_size_asked_and_the_images_content(kodak_dir):
  height, width = memory.image_size(0.05)
  assert height * width <= 50_000 and abs(width / height - 4 / 3) < 0.01
  height, width = memory.image_size(67.1)  # coded as it is: within the 2^26 limit
  assert height % 64 == width % 64 == 0 and 66e6 < height * width <= 2**26
  image = memory.mosaic(kodak_dir, 600, 1100)
  assert image.shape == (600, 1100, 3) and image.dtype == np.uint8
  first = memory.mosaic(kodak_dir, 512, 512)
  np.testing.assert_array_equal(image[:512, :512], first)  # piece 1: the first image's crop
  assert not np.array_equal(image[:512, 512:1024], first)  # piece 2: the next image's


def test_tiled_and_untiled_measurements_code_the_same_strings(model_dir, kodak_dir, tmp_path):
  height, width = 193, 258  # 13 x 17 latents: tiles of 8 at a 1 MB budget, 2 x 3 of them
  rows = []
  for budget, operation in ((0, "compress"), (1, "compress"), (1, "decompress")):
    spec = worker_spec(
      model_dir,
      kodak_dir,
      tmp_path / f"{budget}.cbx",
      budget=budget,
      height=height,
      width=width,
      repeats=2,
      operation=operation,
    )
    row = memory.worker(spec)
    assert row["peak_mb"] >= row["base_mb"] > 0 and row["seconds"] > 0 and row["calls"] == 2
    rows.append(
      {"model": "tiny", "megapixels": 0.05, "budget_mb": budget, "operation": operation, **row}
    )
    stream, size = bitstream.read(spec["file"])
    assert (stream.height, stream.width) == (height, width) and size == row["bytes"]
  rows.append({**rows[0], "operation": "decompress"})  # the untiled decode: as its encode
  frame = memory.summarize(rows)
  tiled = frame[frame.budget_mb == 1]
  assert list(tiled.same_strings_as_untiled) == [True, True]
  assert (tiled.time_vs_untiled > 0).all()
  assert frame[frame.budget_mb == 0].same_strings_as_untiled.isna().all()
  table = memory.markdown(frame)
  assert "| tiny | 0.05 | decompress | budget 1 MB |" in table and "| yes |" in table

  rows[1]["strings_sha256"] = "0" * 16  # a tiled encoder that coded other strings
  assert "**no**" in memory.markdown(memory.summarize(rows))


def test_a_measurement_traces_only_the_graph_it_measures(
  model_dir, kodak_dir, tmp_path, monkeypatch
):
  """As a user's `cbexp codec compress` (or decompress) process: the compress measurement never
  decodes and the decompress one never encodes (the other graph's memory is not that user's);
  each warms up on a small image first (one untimed call)."""
  from cbexp.codec.codec import Codec

  calls = []
  for name in ("encode", "decode"):

    def spy(self, *args, _name=name, _original=getattr(Codec, name), **kwargs):
      calls.append(_name)
      return _original(self, *args, **kwargs)

    monkeypatch.setattr(Codec, name, spy)
  spec = worker_spec(model_dir, kodak_dir, tmp_path / "image.cbx")
  memory.worker(spec)
  assert calls == ["encode", "encode"]
  calls.clear()
  row = memory.worker({**spec, "operation": "decompress"})
  assert calls == ["decode", "decode"] and row["peak_mb"] >= row["base_mb"] > 0


def test_repeated_compress_calls_must_code_the_same_strings(
  model_dir, kodak_dir, tmp_path, monkeypatch
):
  from cbexp.codec.codec import Codec

  calls = []

  def unsteady(self, image, _encode=Codec.encode):
    stream = _encode(self, image)
    calls.append(1)
    if len(calls) == 3:  # the warm-up, the first timed call, then another string
      return dataclasses.replace(stream, strings=(b"x", *stream.strings[1:]))
    return stream

  monkeypatch.setattr(Codec, "encode", unsteady)
  spec = worker_spec(model_dir, kodak_dir, tmp_path / "image.cbx", repeats=3)
  with pytest.raises(memory.MemoryBenchError, match="compress call 2 coded other strings"):
    memory.worker(spec)


def test_a_failed_measurement_is_one_line_in_the_table(model_dir, kodak_dir, tmp_path):
  opts = memory.options(
    OmegaConf.create(
      {
        "default_entropy": [],
        "model": [str(tmp_path / "missing")],
        "sizes_mp": [0.01],
        "budgets_mb": [0],
        "untiled_max_mp": 1.0,
        "images": str(kodak_dir),
        "max_pixels": 2**26,
        "threads": 0,
        "time_repeats": 1,
        "seed": 0,
        "timeout_s": 300,
        "out": "m.csv",
      }
    )
  )
  seen = []  # the table is written after each measurement: a stopped run keeps them
  rows = memory.run_all(opts, progress=lambda line: None, measured=lambda r: seen.append(len(r)))
  assert len(rows) == 1 and "missing" in rows[0]["failed"], rows
  assert seen == [1]
  assert "failed: " in memory.markdown(memory.summarize(rows))


RESIDENT = """
def resident_mb():
  for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
"""

RESTORE = (
  """
import sys
if sys.argv[1] == "returned":
  from cbexp.cli.common import return_freed_memory
  return_freed_memory()
import tensorflow as tf
"""
  + RESIDENT
  + """
weights = [tf.Variable(tf.zeros([512, 1024])) for _ in range(128)]  # 256 MB, as a model's
path = tf.train.Checkpoint(w=weights).write(sys.argv[2])
before = resident_mb()
tf.train.Checkpoint(w=weights).read(path)
print(resident_mb() - before)
"""
)


def test_a_codec_process_does_not_keep_a_restored_models_second_copy(tmp_path):
  """``return_freed_memory`` (what `cbexp codec` and the memory benchmark's processes run
  first): restoring 256 MB of weights leaves the process holding them once, not twice as
  TensorFlow's own CPU allocator does (its pool keeps the buffers the restore replaced)."""
  import os
  import subprocess
  import sys

  env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
  grown = float(
    subprocess.run(
      [sys.executable, "-c", RESTORE, "returned", str(tmp_path / "ckpt")],
      capture_output=True,
      text=True,
      check=True,
      env=env,
    ).stdout.split()[-1]
  )
  assert grown < 64, f"restoring 256 MB of weights left {grown:.0f} MB more resident"


HEAP = (
  """
import sys
from cbexp.cli.common import release_freed_memory, return_freed_memory
if sys.argv[1] == "returned":
  return_freed_memory()
"""
  + RESIDENT
  + """
# 256 MB in blocks of 16 KB, each followed by a small one that stays (as loading a model and
# tracing its graph leave them): the heap cannot shrink from its top, and glibc keeps them.
blocks = [(bytearray(b"x" * (16 << 10)), bytearray(1024)) for _ in range(16384)]
kept = [small for _, small in blocks]
del blocks
before = resident_mb()
release_freed_memory()
print(before - resident_mb())
"""
)


@pytest.mark.parametrize("mode, released", [("returned", True), ("kept", False)])
def test_a_codec_process_gives_back_what_its_heap_holds_free_before_coding(mode, released):
  """``release_freed_memory`` (`cbexp codec` and the benchmark's processes, once the graph is
  traced): 256 MB freed in blocks the heap keeps go back to the system, in a process that
  gives memory back (``return_freed_memory``); a process that keeps TensorFlow's pool keeps its
  heap too."""
  import subprocess
  import sys

  given_back = float(
    subprocess.run(
      [sys.executable, "-c", HEAP, mode], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
  )
  if released:
    assert given_back > 192, f"{given_back:.0f} MB of 256 MB given back"
  else:
    assert given_back < 32, f"{given_back:.0f} MB given back"
