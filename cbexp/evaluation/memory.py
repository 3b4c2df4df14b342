"""Peak memory and time of the codec by image size (``cbexp memory``, ``run``): per model, image
size and memory budget (0: untiled), one fresh process compresses a synthetic image and another
decompresses its file, each reporting its peak resident memory (VmHWM: TensorFlow, the model and
the work, as a user's process meets them) and the time of the call (its graph traced before, on
a small image; a process traces the graph it measures only, as `cbexp codec compress` or
decompress does). Where the time is compared with the untiled one (up to ``untiled_max_mp``),
the call runs ``time_repeats`` times and the fastest counts, as timeit reports: on a shared
machine one call's time varies by 10-20% from run to run, more than the difference measured;
the first call's time is in the table too. Tiled and untiled files of one size must hold the
same strings, and so must the repeated calls of one compress.

The images are mosaics of 512x512 crops of an image folder (Kodak by default), 4:3, so that
every size has photographic content and the run does not depend on a download.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from cbexp.constants import PAD_MULTIPLE
from cbexp.errors import CbexpError

CROP = 512  # side of the mosaic's pieces
ASPECT = 4 / 3  # width / height of the synthetic images, a camera's
COLUMNS = (
  "model",
  "megapixels",
  "width",
  "height",
  "budget_mb",
  "operation",
  "peak_mb",
  "base_mb",
  "seconds",
  "seconds_first",
  "calls",
  "bytes",
  "strings_sha256",
)


class MemoryBenchError(CbexpError, ValueError):
  pass


@dataclasses.dataclass
class MemoryOptions:
  """What to measure (conf/memory.yaml, checked by ``options``)."""

  default_entropy: list
  model: list
  sizes_mp: list
  budgets_mb: list
  untiled_max_mp: float
  images: str
  max_pixels: int
  threads: int
  time_repeats: int
  seed: int
  timeout_s: int
  out: str


def _numbers(cfg, key):
  try:
    values = [float(v) for v in cfg[key]]
  except ValueError:
    values = []
  if not values or min(values) < 0:
    raise MemoryBenchError(f"{key} must be a non-empty list of numbers >= 0, got {cfg[key]}")
  return values


def options(cfg):
  if not cfg.images:
    raise MemoryBenchError("no images: give images=<folder> or set CBEXP_KODAK_DIR")
  if not pathlib.Path(cfg.images).is_dir():
    raise MemoryBenchError(f"images folder {cfg.images} does not exist")
  if cfg.time_repeats < 1:
    raise MemoryBenchError(f"time_repeats must be >= 1, got {cfg.time_repeats}")
  if cfg.timeout_s < 1:
    raise MemoryBenchError(f"timeout_s must be >= 1, got {cfg.timeout_s}")
  return MemoryOptions(
    default_entropy=[str(e) for e in cfg.default_entropy],
    model=[str(m) for m in cfg.model],
    sizes_mp=_numbers(cfg, "sizes_mp"),
    budgets_mb=_numbers(cfg, "budgets_mb"),
    untiled_max_mp=float(cfg.untiled_max_mp),
    images=str(cfg.images),
    max_pixels=int(cfg.max_pixels),
    threads=int(cfg.threads),
    time_repeats=int(cfg.time_repeats),
    seed=int(cfg.seed),
    timeout_s=int(cfg.timeout_s),
    out=str(cfg.out),
  )


def image_size(megapixels):
  """(height, width) of a 4:3 image of about ``megapixels`` million pixels, both multiples of
  PAD_MULTIPLE, so that the coded (padded) size is not above the pixels asked for: 67 MP stays
  within the 2^26 limit."""
  pixels = int(megapixels * 1e6)
  height = max(1, int((pixels / ASPECT) ** 0.5) // PAD_MULTIPLE) * PAD_MULTIPLE
  width = max(1, pixels // height // PAD_MULTIPLE) * PAD_MULTIPLE
  return height, width


def mosaic(folder, height, width):
  """A uint8 [height, width, 3] image of CROP x CROP pieces of the folder's images, in name order,
  repeated; built row by row into one array (the only image-sized allocation), aligned as
  ``images.load_image`` aligns a file's pixels."""
  from cbexp import images

  pieces = [images.load_image(p)[:CROP, :CROP] for p in images.list_images(folder)]
  if not pieces:
    raise MemoryBenchError(f"no images in {folder}")
  out = images.aligned_empty((height, width, 3))  # as load_image gives it
  k = 0
  for top in range(0, height, CROP):
    for left in range(0, width, CROP):
      piece = pieces[k % len(pieces)]
      k += 1
      h, w = min(CROP, height - top), min(CROP, width - left)
      out[top : top + h, left : left + w] = piece[:h, :w]
  return out


def _memory_mb(field):
  """A field of /proc/self/status (VmHWM: the peak resident set; VmRSS: the current) in MB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) / 1024
  raise MemoryBenchError(f"/proc/self/status has no {field}: peak memory needs Linux")


def _codec(spec):
  """The codec a worker measures: the model reference's (``load_codec``) with the spec's memory
  budget."""
  from cbexp.load import load_codec

  return load_codec(spec["ref"], max_pixels=spec["max_pixels"], memory_budget_mb=spec["budget"])


def worker(spec, ready=lambda: None):
  """One measurement in this (fresh) process: ``spec["operation"]`` "compress" (writes
  ``spec["file"]``) or "decompress" (reads it) -> the row's measured columns. ``ready()`` runs
  once the model is loaded and its graph traced, before the measured calls (the command's
  ``release_freed_memory``, as `cbexp codec` runs it)."""
  import tensorflow as tf

  from cbexp.codec import bitstream

  if spec["threads"]:
    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
  codec = _codec(spec)
  height, width = spec["height"], spec["width"]
  # The warm-up traces the measured graph only, as a user's `cbexp codec compress` (or
  # decompress) process does: the other graph would hold memory that process never holds. The
  # decompress process warms up on the file of a small image that the compress process wrote.
  warmup_file = pathlib.Path(spec["file"]).with_suffix(".warmup.cbx")
  calls = int(spec.get("repeats", 1))
  times = []
  if spec["operation"] == "compress":
    bitstream.write(warmup_file, codec.encode(mosaic(spec["images"], 64, 64)))
    image = mosaic(spec["images"], height, width)
    ready()
    base = _memory_mb("VmRSS")
    first = None
    for call in range(1, calls + 1):
      start = time.perf_counter()
      stream = codec.encode(image)
      times.append(time.perf_counter() - start)
      first = stream if first is None else first
      if stream.strings != first.strings:
        raise MemoryBenchError(f"compress call {call} coded other strings than call 1")
    size = bitstream.write(spec["file"], stream)
  else:
    codec.decode(bitstream.read(warmup_file)[0])
    stream, size = bitstream.read(spec["file"])
    ready()
    base = _memory_mb("VmRSS")
    for _ in range(calls):
      start = time.perf_counter()
      decoded = codec.decode(stream)
      times.append(time.perf_counter() - start)
      if decoded.shape != (height, width, 3):
        raise MemoryBenchError(f"decoded {decoded.shape}, expected {(height, width, 3)}")
      del decoded  # not held beside the next call's image
  digest = hashlib.sha256(b"".join(stream.strings)).hexdigest()[:16]
  return {
    "peak_mb": round(_memory_mb("VmHWM"), 1),
    "base_mb": round(base, 1),
    "seconds": round(min(times), 3),
    "seconds_first": round(times[0], 3),
    "calls": calls,
    "bytes": size,
    "strings_sha256": digest,
  }


def worker_main(spec_text, ready=lambda: None):
  """``python -m cbexp.memory --worker SPEC``: prints the row of ``worker(json SPEC, ready)`` as
  one JSON line."""
  print(json.dumps(worker(json.loads(spec_text), ready)), flush=True)


def measure(spec, timeout_s):
  """Runs ``worker(spec)`` in a fresh Python process -> its row, or the reason it failed."""
  command = [sys.executable, "-m", "cbexp.memory", "--worker", json.dumps(spec)]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
  except subprocess.TimeoutExpired:
    return {"failed": f"took more than {timeout_s} s"}
  if done.returncode:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return {"failed": lines[-1] if lines else f"exit status {done.returncode}"}
  return json.loads(done.stdout.strip().splitlines()[-1])


def subjects(opts, overrides, scratch):
  """[(name, model reference)]: the model references, or the untrained models of the config
  (fixed-seed weights, ``opts.seed``) saved as model directories under ``scratch``, so that
  every process measures the same weights."""
  if opts.model:
    if overrides:
      raise MemoryBenchError(
        f"{' '.join(overrides)}: model-config overrides build untrained models; "
        "trained models (model=) are measured as they were saved"
      )
    return [(ref, ref) for ref in opts.model]
  from cbexp.codec.model_dir import save_model_dir
  from cbexp.load import build_untrained

  named = [o.split("=", 1)[1] for o in overrides if o.startswith("entropy=")]
  rest = [o for o in overrides if not o.startswith("entropy=")]
  entropies = ",".join(named).split(",") if named else opts.default_entropy
  found = []
  for entropy in entropies:
    model, cfg = build_untrained([f"entropy={entropy}", *rest], seed=opts.seed)
    directory = pathlib.Path(scratch) / entropy
    save_model_dir(model, cfg, directory)
    found.append((entropy, str(directory)))
  return found


def run_all(opts, overrides=(), progress=print, measured=None):
  """Every (model, size, budget): compress, then decompress its file -> list of row dicts.
  ``measured(rows)`` after each measurement (``run`` writes the table so far: a stopped run
  keeps what it measured)."""
  rows = []
  with tempfile.TemporaryDirectory(prefix="cbexp-memory-") as scratch:
    for name, ref in subjects(opts, overrides, scratch):
      for megapixels in opts.sizes_mp:
        height, width = image_size(megapixels)
        for budget in opts.budgets_mb:
          if not budget and megapixels > opts.untiled_max_mp:
            continue  # untiled only where it fits (untiled_max_mp)
          spec = {
            "ref": ref,
            "budget": budget,
            "height": height,
            "width": width,
            "images": opts.images,
            "max_pixels": opts.max_pixels,
            "threads": opts.threads,
            "repeats": opts.time_repeats if megapixels <= opts.untiled_max_mp else 1,
            "file": str(pathlib.Path(scratch) / "image.cbx"),
          }
          for operation in ("compress", "decompress"):
            row = {
              "model": name,
              "megapixels": round(height * width / 1e6, 2),
              "width": width,
              "height": height,
              "budget_mb": budget,
              "operation": operation,
            }
            row.update(measure({**spec, "operation": operation}, opts.timeout_s))
            rows.append(row)
            progress(_progress_line(row))
            if measured:
              measured(rows)
            if "failed" in row:
              break
  return rows


def budget_label(budget_mb):
  return "untiled" if not budget_mb else f"budget {budget_mb:g} MB"


def _progress_line(row):
  what = (
    f"{row['model']} {row['megapixels']} MP {row['operation']} {budget_label(row['budget_mb'])}"
  )
  if "failed" in row:
    return f"{what}: failed: {row['failed']}"
  return f"{what}: peak {row['peak_mb']:.0f} MB, {row['seconds']:.2f} s"


def summarize(rows):
  """One row per measurement, with the time against the untiled one of the same model, size and
  operation, and whether the strings equal the untiled ones (where untiled ran) -> DataFrame."""
  import pandas as pd

  frame = pd.DataFrame(rows)
  if "failed" not in frame:
    frame["failed"] = None
  key = ["model", "megapixels", "operation"]
  untiled = frame[(frame.budget_mb == 0) & frame.failed.isna()].set_index(key)
  ratios, same = [], []
  for _, row in frame.iterrows():
    where = tuple(row[k] for k in key)
    if row.budget_mb == 0 or where not in untiled.index or not pd.isna(row.failed):
      ratios.append(None)
      same.append(None)
      continue
    reference = untiled.loc[where]
    ratios.append(round(row.seconds / reference.seconds, 3))
    same.append(bool(row.strings_sha256 == reference.strings_sha256))
  frame["time_vs_untiled"] = ratios
  frame["same_strings_as_untiled"] = same
  return frame


def markdown(frame):
  """The table of the docs: peak MB and seconds of each measurement."""
  import pandas as pd

  lines = [
    "| model | MP | operation | tiles | peak MB | seconds | time vs untiled | same strings |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for _, r in frame.iterrows():
    what = f"| {r.model} | {r.megapixels} | {r.operation} | {budget_label(r.budget_mb)} |"
    if isinstance(r.failed, str):
      lines.append(f"{what} failed: {r.failed} | | | |")
      continue
    ratio = "" if pd.isna(r.time_vs_untiled) else f"{r.time_vs_untiled:.2f}x"
    same = (
      "" if pd.isna(r.same_strings_as_untiled) else "yes" if r.same_strings_as_untiled else "**no**"
    )
    lines.append(f"{what} {r.peak_mb:.0f} | {r.seconds:.2f} | {ratio} | {same} |")
  return "\n".join(lines) + "\n"


def run(cfg, overrides=(), command="cbexp memory"):
  from cbexp.evaluation.machine import machine_info

  opts = options(cfg)
  started = time.time()
  out = pathlib.Path(opts.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  rows = run_all(
    opts,
    overrides,
    progress=lambda line: print(line, flush=True),
    measured=lambda rows: summarize(rows).to_csv(out, index=False),
  )
  frame = summarize(rows)
  frame.to_csv(out, index=False)
  table = markdown(frame)
  out.with_suffix(".md").write_text(table)
  info = {
    "command": command,
    "options": dataclasses.asdict(opts),
    "overrides": list(overrides),
    "seconds": round(time.time() - started, 1),
    "machine": machine_info(),
  }
  out.with_suffix(".json").write_text(json.dumps(info, indent=2, default=str) + "\n")
  print(table)
  return frame
