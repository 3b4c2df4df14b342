"""Decode conformance matrix (``cbexp conformance``, ``run``): does a ``.cbx`` made in one
numeric environment decode to the same image in another? One fresh process encodes every image
in the reference configuration and records what the range coder coded; one fresh process per
decode configuration decodes every file for real and teacher-forced (``EntropyParameterRecorder``),
which counts mismatched scale indexes and symbols; ``cbexp.evaluation.conformance_report``
summarizes and writes the results. The protocol: docs, guides, conformance.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from cbexp.errors import CbexpError
from cbexp.evaluation import metrics
from cbexp.evaluation.conformance_report import write_report

# CUDA_VISIBLE_DEVICES=-1 keeps the CPU configurations off any GPU.
_CPU = {"CUDA_VISIBLE_DEVICES": "-1"}


@dataclasses.dataclass(frozen=True)
class DecodeEnvironment:
  """A decode configuration: environment variables (set before TensorFlow imports), intra-op
  threads, decoding precision."""

  env: dict
  threads: int = 2
  precision: str = "float32"
  index_offset: float = 0.0  # added to the decoder's scale indexes: a deliberately broken decoder
  one_cpu: bool = False  # the process pinned to one CPU (as ``taskset -c 0``)
  about: str = ""


CONFIGS = {
  "reference": DecodeEnvironment(
    _CPU, about="the encoder's: 2 threads, oneDNN on, full instruction set"
  ),
  "threads1": DecodeEnvironment(_CPU, threads=1, about="1 intra-op thread"),
  "onednn_off": DecodeEnvironment(
    dict(_CPU, TF_ENABLE_ONEDNN_OPTS="0"), about="TF_ENABLE_ONEDNN_OPTS=0"
  ),
  "onednn_off_threads1": DecodeEnvironment(
    dict(_CPU, TF_ENABLE_ONEDNN_OPTS="0"), threads=1, about="oneDNN off and 1 thread"
  ),
  "avx2": DecodeEnvironment(
    dict(_CPU, ONEDNN_MAX_CPU_ISA="AVX2"),
    about="ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN kernels without AVX-512)",
  ),
  "avx2_threads1": DecodeEnvironment(
    dict(_CPU, ONEDNN_MAX_CPU_ISA="AVX2"), threads=1, about="AVX2 cap and 1 thread"
  ),
  # The AVX2 cap changes nothing on a CPU without AVX-512; SSE4.1 is another instruction set on
  # every AVX2 or AVX-512 CPU, so it is the configuration that changes the kernels for real.
  "sse41": DecodeEnvironment(
    dict(_CPU, ONEDNN_MAX_CPU_ISA="SSE41"),
    about="ONEDNN_MAX_CPU_ISA=SSE41 (oneDNN kernels without AVX: another instruction set on "
    "any AVX2 or AVX-512 CPU)",
  ),
  "sse41_threads1": DecodeEnvironment(
    dict(_CPU, ONEDNN_MAX_CPU_ISA="SSE41"), threads=1, about="SSE4.1 cap and 1 thread"
  ),
  "one_cpu": DecodeEnvironment(
    _CPU, one_cpu=True, about="pinned to one CPU, as taskset -c 0 (thread pools of one core)"
  ),
  "bfloat16": DecodeEnvironment(
    _CPU,
    precision="bfloat16",
    about="bfloat16 synthesis (set_decode_precision): symbols "
    "compared with the encoder's, the image with a bfloat16 reference decode",
  ),
  "gpu": DecodeEnvironment({}, about="the GPU (range coding stays on the CPU)"),
  "index_offset": DecodeEnvironment(
    _CPU,
    index_offset=1.0,
    about="a deliberately broken decoder (every scale index + 1): "
    "checks that the measurement sees mismatches",
  ),
}
DEFAULT_CONFIGS = (
  "threads1",
  "onednn_off",
  "avx2",
  "sse41",
  "one_cpu",
  "onednn_off_threads1",
  "bfloat16",
)
# Environment variables that change the numerics; the reference configuration has none of them.
NUMERIC_ENV = (
  "TF_ENABLE_ONEDNN_OPTS",
  "ONEDNN_MAX_CPU_ISA",
  "CUDA_VISIBLE_DEVICES",
  "OMP_NUM_THREADS",
  "TF_NUM_INTRAOP_THREADS",
)
TRAINING_NOTE = (
  "trained models may have trained on some of these Kodak images (the laptop recipe: "
  "kodim01-10, kodim11-12 validate; see each model's config.yaml); for decode conformance "
  "(same file, other machine) this does not matter"
)


class ConformanceError(CbexpError, ValueError):
  pass


def configs_help():
  """The decode configurations, one line each (for --help)."""
  return "\n".join(f"  {name:<20} {config.about}" for name, config in CONFIGS.items())


@dataclasses.dataclass
class ConformanceOptions:
  """What to measure and where (conf/conformance.yaml, checked by ``options``)."""

  model: list  # trained models, by reference (cbexp.load)
  numerics: list
  images: str
  max_images: int
  configs: list
  configs_given: bool  # False: the defaults, and the GPU when one is visible
  out: str
  timeout: int
  seed: int
  work: str = None
  mlflow: str = None
  experiment: str = "conformance"


def options(cfg, overrides=()):
  """conf/conformance.yaml's keys and the untrained models' overrides -> ConformanceOptions."""
  from cbexp.entropy.exact import NUMERICS

  if not cfg.model and not any(o.partition("=")[0] == "entropy" for o in overrides):
    raise ConformanceError("no models: give model=<ref>[,...] or entropy=<name>[,...]")
  numerics = [str(n) for n in cfg.numerics]
  for value in numerics:
    if value not in NUMERICS:
      raise ConformanceError(f"numerics must be among {NUMERICS}, got {value!r}")
  configs = [str(c) for c in cfg.configs] or list(DEFAULT_CONFIGS)
  for name in configs:
    if name not in CONFIGS:
      raise ConformanceError(f"unknown configuration {name!r} (known: {', '.join(CONFIGS)})")
  if not cfg.images:
    raise ConformanceError("no images: give images=<folder> or set CBEXP_KODAK_DIR")
  if not pathlib.Path(cfg.images).is_dir():
    raise ConformanceError(f"images folder {cfg.images} does not exist")
  for key, minimum in (("timeout", 1), ("max_images", 0)):
    if cfg[key] < minimum:
      raise ConformanceError(f"{key} must be >= {minimum}, got {cfg[key]}")
  return ConformanceOptions(
    model=[str(m) for m in cfg.model],
    numerics=numerics,
    images=str(cfg.images),
    max_images=cfg.max_images,
    configs=list(dict.fromkeys(configs)),
    configs_given=bool(cfg.configs),
    out=str(cfg.out),
    timeout=cfg.timeout,
    seed=cfg.seed,
    work=cfg.work,
    mlflow=cfg.mlflow,
    experiment=str(cfg.experiment),
  )


# --- recording what the range coder codes ------------------------------------------------------
class EntropyParameterRecorder:
  """The coded entropy parameters of an image, per string (``CodingRecorder``): on the encoder
  (``record_encoder``: the model's own coding graph) or on the decoder with the encoder's
  symbols fed back (``teacher_forced``): the decoder's own graph computes every entropy
  parameter, but each string is reconstructed from the encoder's teacher (plus the decoder's own
  means, as a decoder in sync would have them), so one flipped index cannot desynchronise the
  rest. A position is a mismatch when its coded scale index or its symbol differs
  (``compare_records``). ``index_offset`` breaks the decoder on purpose. One tf.function each,
  spatial dimensions open: one trace for every image size."""

  def __init__(self, model, index_offset=0.0):
    import tensorflow as tf

    self.model, self.index_offset = model, float(index_offset)
    self._encode = tf.function(
      self._encode_fn, input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)]
    )
    self._teacher = None

  def _encode_fn(self, x):
    from cbexp.entropy.base import CodingRecorder

    with self.model.entropy_model.recording(CodingRecorder()) as recorder:
      strings = self.model.compress_padded(x)[0]  # the codec's own encoder graph
    return strings, [r.tensors() for r in recorder.records]

  def _teacher_fn(self, strings, padded_shape, teacher):
    from cbexp.entropy.base import CodingRecorder
    from cbexp.models.compression import PAD_MULTIPLE

    model, em = self.model, self.model.entropy_model
    z_shape = padded_shape // PAD_MULTIPLE
    z_hat = model.z_coder.decompress(strings[:1], z_shape)
    with em.recording(CodingRecorder(self.index_offset, teacher)) as recorder:
      em.decompress([strings[i + 1 : i + 2] for i in range(em.num_strings)], z_hat, z_shape * 4)
    return [r.tensors() for r in recorder.records]

  def record_encoder(self, image):
    """-> (the strings of ``image``, the encoder's records)."""
    from cbexp.models.compression import pad_to_multiple

    strings, records = self._encode(pad_to_multiple(image))
    return [bytes(s) for s in strings.numpy()], numpy_records(records)

  def teacher_forced(self, strings, image_shape, encoder_records):
    """-> the decoder's records, each string reconstructed from the encoder's teacher."""
    import tensorflow as tf

    from cbexp.models.compression import padded_shape

    teacher = [tf.constant(r["teacher"]) for r in encoder_records]
    if self._teacher is None:
      self._teacher = tf.function(
        self._teacher_fn,
        input_signature=[
          tf.TensorSpec([len(strings)], tf.string),
          tf.TensorSpec([2], tf.int32),
          [tf.TensorSpec([None, None, None, t.shape[-1]], t.dtype) for t in teacher],
        ],
      )
    padded = padded_shape(tf.constant(image_shape, tf.int32))
    return numpy_records(self._teacher(tf.constant(strings, tf.string), padded, teacher))


def numpy_records(records):
  return [
    {
      "indexes": np.asarray(i).astype(np.int32),
      "symbols": np.asarray(s).astype(np.int64),
      "means": np.asarray(m, np.float32),
      "teacher": np.asarray(t, np.float32),
    }
    for i, s, m, t in records
  ]


def compare_records(encoder, decoder):
  """-> per-image mismatch counts between the encoder's and the teacher-forced decoder's."""
  counts = dict(
    symbols=0,
    index_mismatches=0,
    symbol_mismatches=0,
    positions_mismatched=0,
    first_mismatch_string=-1,
    max_abs_mean_diff=0.0,
  )
  if len(encoder) != len(decoder):
    raise RuntimeError(f"the decoder coded {len(decoder)} strings, the encoder {len(encoder)}")
  for k, (e, d) in enumerate(zip(encoder, decoder)):
    index = e["indexes"] != d["indexes"]
    symbol = e["symbols"] != d["symbols"]
    counts["symbols"] += e["indexes"].size
    counts["index_mismatches"] += int(index.sum())
    counts["symbol_mismatches"] += int(symbol.sum())
    counts["positions_mismatched"] += int((index | symbol).sum())
    if (index | symbol).any() and counts["first_mismatch_string"] < 0:
      counts["first_mismatch_string"] = k
    counts["max_abs_mean_diff"] = max(
      counts["max_abs_mean_diff"], float(np.abs(e["means"] - d["means"]).max(initial=0.0))
    )
  return counts


# --- the worker processes ------------------------------------------------------------------------
def _codec(model, cfg, precision="float32"):
  from cbexp.codec.codec import Codec

  model.set_decode_precision(precision)
  return Codec.from_model(model, cfg, "conformance")


def encode_subject(subject, job):
  """Reference configuration, one model: .cbx files, the encoder's records and the reference
  decodes (also in bfloat16 when a configuration decodes so) -> {model name, lmbda}."""
  from cbexp.codec import bitstream
  from cbexp.images import load_image
  from cbexp.load import load_model

  model, cfg = load_model(subject["ref"], subject["numerics"])
  recorder, codec = EntropyParameterRecorder(model), _codec(model, cfg)
  folder = pathlib.Path(job["work"]) / subject["key"]
  folder.mkdir(parents=True, exist_ok=True)
  for name, path in job["images"]:
    image = load_image(path)
    stream, encode_s = _timed(codec.encode, image)
    strings, records = recorder.record_encoder(image)
    if list(stream.strings) != strings:
      raise RuntimeError(
        f"{subject['key']} {name}: the recording encoder's strings differ from the codec's"
      )
    bitstream.write(folder / f"{name}.cbx", stream)
    reference, decode_s = _timed(codec.decode, stream)
    np.savez(
      folder / f"{name}.npz",
      reference=reference,
      encode_s=encode_s,
      decode_s=decode_s,
      num_bytes=len(stream.to_bytes()),
      height=image.shape[0],
      width=image.shape[1],
      **{f"{key}_{k}": value for k, r in enumerate(records) for key, value in r.items()},
      num_records=len(records),
    )
  if "bfloat16" in job["precisions"]:
    codec = _codec(model, cfg, "bfloat16")
    for name, _ in job["images"]:
      stream, _ = bitstream.read(folder / f"{name}.cbx")
      np.save(folder / f"{name}.bfloat16.npy", codec.decode(stream))
  return {"model": str(cfg.entropy.name), "lmbda": float(cfg.get("lmbda", float("nan")))}


def _timed(fn, *args):
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def load_encoder_records(saved):
  keys = ("indexes", "symbols", "means", "teacher")
  return [{key: saved[f"{key}_{k}"] for key in keys} for k in range(int(saved["num_records"]))]


def decode_outcome(codec, stream, reference):
  """The real decode of one file against its reference image: ``identical``, ``different``
  (decoded, without an error, to another image) or ``refused`` by the decoder's checks (the
  error's first line kept), with the largest pixel difference and the time."""
  start = time.perf_counter()
  try:
    decoded = codec.decode(stream)
  except Exception as error:  # noqa: BLE001 - any refusal is an outcome to report
    lines = str(error).strip().splitlines()
    return {
      "outcome": "refused",
      "max_abs_pixel_diff": -1,
      "error": f"{error.__class__.__name__}: {lines[0] if lines else ''}",
      "decode_s": time.perf_counter() - start,
    }
  return {
    "outcome": "identical" if np.array_equal(decoded, reference) else "different",
    "max_abs_pixel_diff": metrics.max_abs_difference(decoded, reference),
    "error": "",
    "decode_s": time.perf_counter() - start,
  }


def decode_subject(subject, job, config):
  """One model in one decode configuration: the real decode and the teacher-forced count of
  every file -> per-image rows."""
  import contextlib

  from cbexp.codec import bitstream
  from cbexp.entropy.base import CodingRecorder
  from cbexp.load import load_model

  model, cfg = load_model(subject["ref"], subject["numerics"])
  recorder = EntropyParameterRecorder(model, config.index_offset)
  folder, rows = pathlib.Path(job["work"]) / subject["key"], []
  broken = (
    model.entropy_model.recording(CodingRecorder(config.index_offset))
    if config.index_offset
    else contextlib.nullcontext()
  )
  with broken:  # the codec's graphs are traced inside, with the offset
    codec = _codec(model, cfg, config.precision)
    for name, _ in job["images"]:
      stream, _ = bitstream.read(folder / f"{name}.cbx")
      saved = np.load(folder / f"{name}.npz")
      reference = (
        np.load(folder / f"{name}.bfloat16.npy")
        if config.precision == "bfloat16"
        else saved["reference"]
      )
      row = {
        "key": subject["key"],
        "image": name,
        "config": job["config"],
        **decode_outcome(codec, stream, reference),
      }
      encoder = load_encoder_records(saved)
      decoder = recorder.teacher_forced(
        list(stream.strings), (stream.height, stream.width), encoder
      )
      rows.append({**row, **compare_records(encoder, decoder)})
  return rows


def worker_main(job_path):
  """``python -m cbexp.conformance --worker JOB.json``: one configuration's process. Writes its
  result (JSON) to ``job["result"]``: the encoder's model descriptions or the decode rows."""
  import tensorflow as tf

  from cbexp.evaluation.machine import worker_info

  job = json.loads(pathlib.Path(job_path).read_text())
  tf.get_logger().setLevel("ERROR")
  # Before the first op: fixed once TensorFlow has started.
  tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
  if job["role"] == "encode":
    result = {s["key"]: encode_subject(s, job) for s in job["subjects"]}
  else:
    info = worker_info()
    result = [
      {**row, **info}
      for s in job["subjects"]
      for row in decode_subject(s, job, CONFIGS[job["config"]])
    ]
  pathlib.Path(job["result"]).write_text(json.dumps(result))


def worker_env(config):
  env = {k: v for k, v in os.environ.items() if k not in NUMERIC_ENV}
  env.update(config.env)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def _pin_to_one_cpu():
  """In the worker before it starts: only the first CPU this process may use, so that TensorFlow
  and oneDNN size their thread pools for one core."""
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run_worker(job, work, timeout):
  """Runs ``job`` in a fresh process in its configuration -> (its result, seconds)."""
  name = job.get("config", "reference")
  path, result = work / f"job_{job['role']}_{name}.json", work / f"result_{job['role']}_{name}.json"
  path.write_text(json.dumps(dict(job, result=str(result))))
  start = time.perf_counter()
  try:
    process = subprocess.run(
      [sys.executable, "-m", "cbexp.conformance", "--worker", str(path)],
      env=worker_env(CONFIGS[name]),
      capture_output=True,
      text=True,
      timeout=timeout,
      preexec_fn=_pin_to_one_cpu if CONFIGS[name].one_cpu else None,
    )
  except subprocess.TimeoutExpired:
    raise ConformanceError(
      f"the {job['role']} process ({name}) did not finish within {timeout} s (timeout=)"
    ) from None
  if process.returncode:
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    raise ConformanceError(
      f"the {job['role']} process ({name}) failed: {lines[-1] if lines else process.returncode}"
    )
  return json.loads(result.read_text()), time.perf_counter() - start


# --- the matrix ----------------------------------------------------------------------------------
def untrained_models(overrides, seed, work):
  """Untrained models from the overrides (``entropy=a,b`` and any swept key: one model each),
  saved as model directories so that every process loads the same weights -> their paths."""
  from hydra.errors import HydraException
  from omegaconf.errors import OmegaConfBaseException

  from cbexp.codec.model_dir import save_model_dir
  from cbexp.config import expand_sweeps
  from cbexp.load import build_untrained

  if not any(o.partition("=")[0] == "entropy" for o in overrides):
    if overrides:
      raise ConformanceError(
        f"{' '.join(overrides)}: model-config overrides build untrained "
        "models: give entropy=<name>[,...] too"
      )
    return []
  directories = []
  for i, (label, variant) in enumerate(expand_sweeps(overrides)):
    try:
      model, cfg = build_untrained(variant, seed=seed)
    except (HydraException, OmegaConfBaseException) as e:  # the message names the option
      raise ConformanceError(
        f"cannot compose {' '.join(variant)}: {str(e).strip().splitlines()[0]}"
      ) from None
    name = f"untrained_{i:02d}_{cfg.entropy.name}{label}"
    directories.append(str(save_model_dir(model, cfg, work / "models" / name)))
  return directories


def decode_configs(opts, notes):
  """The configurations to decode in: the GPU added by default when one is visible, skipped
  (with a note) when none is."""
  from cbexp.evaluation.machine import gpu_visible

  configs = list(opts.configs)
  if "gpu" in configs or not opts.configs_given:
    if gpu_visible():
      configs = configs if "gpu" in configs else configs + ["gpu"]
    else:
      configs = [c for c in configs if c != "gpu"]
      notes.append("no GPU visible: the gpu configuration was skipped")
  return configs


def run(cfg, overrides=(), command="cbexp conformance"):
  """``cbexp conformance``: conf/conformance.yaml's keys ``cfg`` and Hydra overrides of the
  untrained models' config; ``command``: the command line, for the report."""
  opts = options(cfg, overrides)
  if opts.work:
    pathlib.Path(opts.work).mkdir(parents=True, exist_ok=True)
    return measure(opts, overrides, pathlib.Path(opts.work), command)
  import tempfile

  with tempfile.TemporaryDirectory(prefix="cbexp_conformance_") as work:
    return measure(opts, overrides, pathlib.Path(work), command)


def measure(opts, overrides, work, command):
  """Encodes in the reference configuration, decodes in each other one, reports."""
  from cbexp.evaluation.machine import machine_info
  from cbexp.images import list_images

  started = time.perf_counter()
  paths = list_images(opts.images)[: opts.max_images or None]
  if not paths:
    raise ConformanceError(f"no images in {opts.images}")
  images, notes = [(pathlib.Path(p).stem, str(p)) for p in paths], []
  configs = decode_configs(opts, notes)
  refs = [(ref, True) for ref in opts.model]
  refs += [(ref, False) for ref in untrained_models(list(overrides), opts.seed, work)]
  subjects = [
    dict(ref=ref, numerics=numerics, key=f"{i:02d}_{numerics}", trained=trained)
    for i, (ref, trained) in enumerate(refs)
    for numerics in opts.numerics
  ]
  base = dict(
    work=str(work.resolve()),
    subjects=subjects,
    images=images,
    precisions=sorted({CONFIGS[c].precision for c in configs}),
  )
  print(
    f"conformance: {len(subjects)} model(s) x {len(images)} image(s); encoding in the "
    f"reference configuration",
    file=sys.stderr,
  )
  timings = {}
  described, timings["encode"] = run_worker(
    dict(base, role="encode", threads=2), work, opts.timeout
  )
  per_image = []
  for name in configs:
    print(f"conformance: decoding in {name} ({CONFIGS[name].about})", file=sys.stderr)
    rows, timings[name] = run_worker(
      dict(base, role="decode", config=name, threads=CONFIGS[name].threads), work, opts.timeout
    )
    per_image += rows
  by_key = {s["key"]: s for s in subjects}
  for row in per_image:
    subject = by_key[row["key"]]
    row.update(
      described[row["key"]],
      numerics=subject["numerics"],
      trained=subject["trained"],
      model_ref=subject["ref"],
    )
  if any(pathlib.Path(p).name.startswith("kodim") for _, p in images) and opts.model:
    notes.append(TRAINING_NOTE)
  notes.append(
    "each configuration decodes in a fresh process (environment set before "
    "TensorFlow imports); only y's symbols are counted (z has fixed tables)"
  )
  report = dict(
    machine=machine_info(),
    command=command,
    wall_s=time.perf_counter() - started,
    process_wall_s=timings,
    reference_config=CONFIGS["reference"].about,
    notes=notes,
  )
  environments = {name: CONFIGS[name] for name in ["reference"] + configs}
  return write_report(opts, per_image, environments, images, report)
