"""Decode conformance matrix: ``python -m cbexp.conformance [key=value ...]``.

Example: ``python -m cbexp.conformance model_dir=outputs/runs/<run>/model images=$CBEXP_KODAK_DIR``
(quick look: ``entropy=hyperprior transform=tiny max_images=2 configs=threads1,onednn_off``).

Does a ``.cbx`` made in one numeric environment decode to the same image in another? Learned
codecs compute the entropy parameters (means, scale indexes) in floating point on both sides; a
different summation order on the decoder can move one rounded scale index, after which the range
decoder desynchronises (issue 13).

Protocol:
* encode: one fresh process in the *reference* configuration (2 intra-op threads, oneDNN on, the
  machine's full instruction set, CPU only) writes every image's ``.cbx`` with the normal encoder
  (``cbexp.codec.Codec.encode``), records what the encoder coded (per string: the coded scale
  indexes, the symbols and the means) and decodes every file once (the reference images; also in
  bfloat16 synthesis, the reference of the ``bfloat16`` configuration);
* decode: one fresh process per configuration (``configs=``), its environment set before
  TensorFlow imports, decodes every file twice:
  - the real decode (``Codec.decode``): *identical* to the reference image, *refused* by the
    decoder's checks (the error's first line is kept), or decoded to another image: *wrong*
    when symbols differ (teacher-forced mismatches below), *pixels_differ* when every symbol is
    right and only the float synthesis rounded some pixels otherwise (max difference reported).
    Corrupted = refused + wrong;
  - a teacher-forced decode, which counts mismatches independently of the cascade: the decoder's
    own graph computes the entropy parameters, but every range decode returns the *encoder's*
    symbols (plus the decoder's own means, as a decoder in sync would have them), so one flipped
    index cannot desynchronise the rest. A position is a mismatch when its coded scale index or
    its symbol (the coded integer, given the decoder's mean) differs from the encoder's. For the
    Gaussian models this hooks ``entropy_model.gaussian``'s compress/decompress on the instance
    (each model calls them once per string, in string order); for the autoregressive model, its
    serial loop's per-position coding step.
  Only y's symbols are counted: z is coded with fixed per-channel tables, no float input.

Configurations (``configs=``, comma-separated; ``reference`` is the encoder's own):
{configs}
Arguments (``key=value``; lists comma-separated):
  model_dir=<dir>[,<dir>...]   trained model directories (cbexp.model_io)
  entropy=<name>[,...]         untrained models (fixed-seed weights) built with the Hydra
                               overrides given (e.g. transform=tiny); saved in the work folder
  numerics=float[,exact]       the entropy path each model is loaded with (entropy.numerics:
                               float as trained, or exact, cbexp.entropy.exact)
  images=<folder>              PNG images (default: $CBEXP_KODAK_DIR)
  max_images=N                 only the first N images (sorted by name); 0 = all
  configs=<names>              decode configurations (default: every CPU one below but
                               reference and index_offset; gpu added when a GPU is visible)
  out=conformance              output folder: conformance.csv (one row per model, numerics and
                               configuration), conformance_per_image.csv, conformance.json
  mlflow=<tracking uri>        also log one MLflow run per row of conformance.csv
  experiment=conformance       MLflow experiment
  timeout=1800                 seconds a worker process may take
  work=<folder>                keep the .cbx files, encoder records and reference decodes there
                               (default: a temporary folder, deleted at the end)
  seed=0                       weight seed for untrained models
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

# Decode configurations: environment (set before TensorFlow imports), intra-op threads, decoding
# precision. CUDA_VISIBLE_DEVICES=-1 keeps the CPU configurations off any GPU.
_CPU = {"CUDA_VISIBLE_DEVICES": "-1"}


@dataclasses.dataclass(frozen=True)
class Config:
  env: dict
  threads: int = 2
  precision: str = "float32"
  index_offset: float = 0.  # added to the decoder's scale indexes: a deliberately broken decoder
  about: str = ""


CONFIGS = {
    "reference": Config(_CPU, about="the encoder's: 2 threads, oneDNN on, full instruction set"),
    "threads1": Config(_CPU, threads=1, about="1 intra-op thread"),
    "onednn_off": Config(dict(_CPU, TF_ENABLE_ONEDNN_OPTS="0"), about="TF_ENABLE_ONEDNN_OPTS=0"),
    "onednn_off_threads1": Config(dict(_CPU, TF_ENABLE_ONEDNN_OPTS="0"), threads=1,
                                  about="oneDNN off and 1 thread"),
    "avx2": Config(dict(_CPU, ONEDNN_MAX_CPU_ISA="AVX2"),
                   about="ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN kernels without AVX-512)"),
    "avx2_threads1": Config(dict(_CPU, ONEDNN_MAX_CPU_ISA="AVX2"), threads=1,
                            about="AVX2 cap and 1 thread"),
    "bfloat16": Config(_CPU, precision="bfloat16",
                       about="bfloat16 synthesis (set_decode_precision): symbols compared with "
                             "the encoder's, the image with a bfloat16 reference decode"),
    "gpu": Config({}, about="the GPU (range coding stays on the CPU)"),
    "index_offset": Config(_CPU, index_offset=1.,
                           about="a deliberately broken decoder (every scale index + 1): checks "
                                 "that the measurement sees mismatches"),
}
DEFAULT_CONFIGS = ("threads1", "onednn_off", "avx2", "onednn_off_threads1", "bfloat16")
# cbexp.entropy.exact.NUMERICS, known here before TensorFlow loads (a test checks).
NUMERICS = ("float", "exact")
DEFAULTS = dict(model_dir="", entropy="", numerics="float", images="", max_images="0",
                configs="", out="conformance", mlflow="", experiment="conformance",
                timeout="1800", seed="0", work="")
# Environment variables that change the numerics; the reference configuration has none of them.
NUMERIC_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "CUDA_VISIBLE_DEVICES",
               "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
TRAINING_NOTE = ("kodim01-11 are the sweep models' training images; for decode conformance "
                 "(same file, other machine) this does not matter")

__doc__ = __doc__.replace("{configs}", "\n".join(
    f"  {name:<20} {config.about}" for name, config in CONFIGS.items()))


class ConformanceError(ValueError):
  pass


# --- arguments ---------------------------------------------------------------------------------
def parse_args(argv):
  from cbexp.evaluation.bench import split_existing_paths
  from cbexp.cli.common import parse_key_values
  args, overrides = parse_key_values(argv, DEFAULTS, ConformanceError,
                                     integers=("max_images", "timeout", "seed"))
  args["model_dir"] = split_existing_paths(args["model_dir"])
  for directory in args["model_dir"]:
    if not (pathlib.Path(directory) / "config.yaml").is_file():
      raise ConformanceError(f"{directory}: not a cbexp model directory (no config.yaml)")
  args["entropy"] = [e for e in args["entropy"].split(",") if e]
  if not args["model_dir"] and not args["entropy"]:
    raise ConformanceError("no models: give model_dir=<dir>[,...] or entropy=<name>[,...]")
  args["numerics"] = [n for n in args["numerics"].split(",") if n]
  for numerics in args["numerics"]:
    if numerics not in NUMERICS:
      raise ConformanceError(f"numerics must be among {NUMERICS}, got {numerics!r}")
  args["configs_given"] = bool(args["configs"])
  configs = [c for c in args["configs"].split(",") if c] or list(DEFAULT_CONFIGS)
  for name in configs:
    if name not in CONFIGS:
      raise ConformanceError(f"unknown configuration {name!r} (known: {', '.join(CONFIGS)})")
  args["configs"] = list(dict.fromkeys(configs))
  args["images"] = args["images"] or os.environ.get("CBEXP_KODAK_DIR", "")
  if not args["images"]:
    raise ConformanceError("no images: give images=<folder> or set CBEXP_KODAK_DIR")
  if not pathlib.Path(args["images"]).is_dir():
    raise ConformanceError(f"images folder {args['images']} does not exist")
  if args["timeout"] < 1:
    raise ConformanceError(f"timeout must be >= 1 s, got {args['timeout']}")
  return args, overrides


def load_model(directory, numerics):
  """A model directory with its entropy path: ``float`` (as trained) or ``exact``."""
  from cbexp.codec.model_dir import load_model_dir
  return load_model_dir(directory, numerics=numerics)


# --- recording what the range coder codes --------------------------------------------------------
class Recorder:
  """Hooks an entropy model's coding steps on the instance (nothing else changes).

  Gaussian models (hyperprior, checkerboard, ChARM, charm_checkerboard): each calls
  ``gaussian.compress`` / ``gaussian.decompress`` once per string, in string order. Recording
  happens while a tf.function traces: the recorded tensors become extra outputs of that graph.
  ``teacher``: the encoder's symbols (round(y - mean), one tensor per string); ``decompress``
  then returns them plus the decoder's own means instead of range decoding: what a decoder in
  sync with the encoder reconstructs (its means' float differences propagate as they would)."""

  def __init__(self, entropy_model, index_offset=0.):
    self.em = entropy_model
    self.gaussian = entropy_model.gaussian
    self.index_offset = float(index_offset)
    self.records, self.teacher = [], None

  def __enter__(self):
    gaussian, compress, decompress = self.gaussian, self.gaussian.compress, self.gaussian.decompress

    def recording_compress(y, scale_indexes, loc):
      indexes = gaussian.coded_indexes(scale_indexes)
      self.records.append((indexes, tf_round(y - loc), loc))
      return compress(y, scale_indexes, loc)

    def recording_decompress(strings, scale_indexes, loc):
      scale_indexes = scale_indexes + self.index_offset
      if self.teacher is None:
        return decompress(strings, scale_indexes, loc)
      values = self.teacher[len(self.records)] + loc
      self.records.append((gaussian.coded_indexes(scale_indexes), tf_round(values - loc), loc))
      return values

    # Hooks may nest (the teacher-forced decode inside a decoder with index_offset): each
    # restores what it found.
    self._saved = {k: gaussian.__dict__[k] for k in ("compress", "decompress")
                   if k in gaussian.__dict__}
    gaussian.compress, gaussian.decompress = recording_compress, recording_decompress
    return self

  def __exit__(self, *exc):
    for key in ("compress", "decompress"):
      if key in self._saved:
        setattr(self.gaussian, key, self._saved[key])
      else:
        delattr(self.gaussian, key)  # the class's method again


def tf_round(x):
  import tensorflow as tf
  return tf.round(x)


def is_autoregressive(model):
  from cbexp.entropy.autoregressive import AutoregressiveEntropyModel
  return isinstance(model.entropy_model, AutoregressiveEntropyModel)


class ParameterRecorder:
  """Records the coded entropy parameters of an image (``record_encoder``) or, on the decoder,
  with the encoder's latents fed back (``teacher_forced``). Both -> list of per-string arrays
  (indexes, symbols, means) as numpy. One tf.function per model (retraced per image shape)."""

  def __init__(self, model, index_offset=0.):
    import tensorflow as tf
    self.model, self.tf, self.index_offset = model, tf, float(index_offset)
    # Spatial dimensions left open: one trace for every image size (Kodak has two orientations).
    self._encode = tf.function(self._encode_fn, input_signature=[
        tf.TensorSpec([1, None, None, 3], tf.float32)])
    self._teacher = None

  # Gaussian models: the hooks; autoregressive: its serial loop with a recording step.
  def _encode_fn(self, x):
    model, tf = self.model, self.tf
    if is_autoregressive(model):
      strings = model._compress_padded(x)[0]  # (strings, y_hat, ...)
      y = model._coding_analysis(x)
      return strings, self._serial_parameters(y, model.z_coder.decompress(
          strings[:1], tf.shape(y)[1:3] // 4), tf.round(y))
    with Recorder(model.entropy_model) as recorder:
      strings = model._compress_padded(x)[0]
    return strings, [tuple(r) for r in recorder.records]

  def _teacher_fn(self, strings, padded_shape, values):
    from cbexp.models.compression import PAD_MULTIPLE
    model = self.model
    z_shape = padded_shape // PAD_MULTIPLE
    z_hat = model.z_coder.decompress(strings[:1], z_shape)
    if is_autoregressive(model):
      return self._serial_parameters(None, z_hat, values[0])
    em = model.entropy_model
    with Recorder(em, self.index_offset) as recorder:
      recorder.teacher = list(values)
      em.decompress([strings[i + 1:i + 2] for i in range(em.num_strings)], z_hat, z_shape * 4)
    return [tuple(r) for r in recorder.records]

  def _serial_parameters(self, y, z_hat, q_all):
    """The autoregressive model's serial loop, coding nothing: each position gets the given
    latents ``q_all`` and its (scale row, mean-grid fraction, integer part of the mean) is
    recorded. Both sides run exactly the loop they code with."""
    tf, em = self.tf, self.model.entropy_model
    steps = em.quantized_mean.mean_steps
    hyper = em.hyper_synthesis(z_hat)
    height, width = tf.shape(hyper)[1], tf.shape(hyper)[2]
    offset = self.index_offset

    def step(handle, i, j, flat, integer):
      flats, integers = handle
      if offset:
        flat = tf.minimum(flat + int(offset) * steps, em.quantized_mean.num_scales * steps - 1)
      k = i * width + j
      return (flats.write(k, flat), integers.write(k, integer)), q_all[:, i, j]

    size = height * width
    (flats, integers), _ = em._serial(hyper, step, (
        tf.TensorArray(tf.int32, size=size), tf.TensorArray(tf.float32, size=size)))
    flats, integers = flats.stack(), integers.stack()  # [H*W, B, M]
    q = tf.reshape(tf.transpose(q_all, [1, 2, 0, 3]), tf.shape(integers))
    # "indexes": the coder's table (scale index and mean-grid fraction); "symbols": q minus the
    # mean's integer part; "means": the grid mean the position is coded with.
    return [(flats, q - integers, integers + tf.cast(flats % steps, tf.float32) / steps)]

  def record_encoder(self, image):
    from cbexp.models.compression import pad_replicate, padded_size
    tf = self.tf
    x = pad_replicate(tf.cast(tf.convert_to_tensor(image)[None], tf.float32),
                      padded_size(image.shape[0]), padded_size(image.shape[1]))
    strings, records = self._encode(x)
    return [bytes(s) for s in strings.numpy()], numpy_records(records)

  def teacher_forced(self, strings, image_shape, encoder_records):
    from cbexp.models.compression import padded_size
    tf = self.tf
    padded = tf.constant([padded_size(image_shape[0]), padded_size(image_shape[1])], tf.int32)
    if is_autoregressive(self.model):
      values = [tf.constant(encoder_records[0]["q"])]
    else:
      values = [tf.constant(r["symbols"], tf.float32) for r in encoder_records]
    if self._teacher is None:
      self._teacher = tf.function(self._teacher_fn, input_signature=[
          tf.TensorSpec([len(strings)], tf.string), tf.TensorSpec([2], tf.int32),
          [tf.TensorSpec([None, None, None, v.shape[-1]], v.dtype) for v in values]])
    return numpy_records(self._teacher(tf.constant(strings, tf.string), padded, values))


def numpy_records(records):
  return [{"indexes": np.asarray(i).astype(np.int32), "symbols": np.asarray(s).astype(np.int64),
           "means": np.asarray(m, np.float32)} for i, s, m in records]


def compare_records(encoder, decoder):
  """-> per-image mismatch counts between the encoder's and the teacher-forced decoder's."""
  counts = dict(symbols=0, index_mismatches=0, symbol_mismatches=0, positions_mismatched=0,
                first_mismatch_string=-1, max_abs_mean_diff=0.)
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
    counts["max_abs_mean_diff"] = max(counts["max_abs_mean_diff"],
                                      float(np.abs(e["means"] - d["means"]).max(initial=0.)))
  return counts


# --- the worker processes ------------------------------------------------------------------------
def _codec(model, cfg, precision="float32"):
  from cbexp.codec import savedmodel as export
  from cbexp.codec.codec import Codec
  model.set_decode_precision(precision)
  return Codec(export.codec_module(model, cfg), "conformance")


def encode_worker(job):
  """Reference configuration: .cbx files, the encoder's records, the reference decodes."""
  import tensorflow as tf
  from cbexp.codec import bitstream
  from cbexp.images import load_image
  work = pathlib.Path(job["work"])
  for subject in job["subjects"]:
    model, cfg = load_model(subject["dir"], subject["numerics"])
    recorder = ParameterRecorder(model)
    codec = _codec(model, cfg)
    folder = work / subject["key"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in job["images"]:
      image = load_image(path)
      start = time.perf_counter()
      stream = codec.encode(image)
      encode_s = time.perf_counter() - start
      strings, records = recorder.record_encoder(tf.constant(image))
      if list(stream.strings) != strings:
        raise RuntimeError(f"{subject['key']} {name}: the recording encoder's strings differ "
                           "from the codec's")
      if is_autoregressive(model):  # the teacher: the encoder's integer latents
        y = model._coding_analysis(tf.cast(padded_image(image), tf.float32))
        records[0]["q"] = np.round(y.numpy()).astype(np.float32)
      bitstream.write(folder / f"{name}.cbx", stream)
      start = time.perf_counter()
      reference = codec.decode(stream)
      decode_s = time.perf_counter() - start
      np.savez(folder / f"{name}.npz", reference=reference, encode_s=encode_s, decode_s=decode_s,
               num_bytes=len(stream.to_bytes()), height=image.shape[0], width=image.shape[1],
               **{f"{key}_{k}": value for k, r in enumerate(records) for key, value in r.items()},
               num_records=len(records))
    if "bfloat16" in job["precisions"]:
      codec = _codec(model, cfg, "bfloat16")
      for name, _ in job["images"]:
        stream, _ = bitstream.read(folder / f"{name}.cbx")
        np.save(folder / f"{name}.bfloat16.npy", codec.decode(stream))


def padded_image(image):
  from cbexp.models.compression import pad_replicate, padded_size
  import tensorflow as tf
  return pad_replicate(tf.cast(tf.convert_to_tensor(image)[None], tf.float32),
                       padded_size(image.shape[0]), padded_size(image.shape[1]))


def load_encoder_records(saved):
  keys = ("indexes", "symbols", "means", "q")
  return [{key: saved[f"{key}_{k}"] for key in keys if f"{key}_{k}" in saved}
          for k in range(int(saved["num_records"]))]


def decode_worker(job):
  """One decode configuration: the real decode and the teacher-forced count of every file."""
  from cbexp.codec import bitstream
  config = CONFIGS[job["config"]]
  work, rows = pathlib.Path(job["work"]), []
  for subject in job["subjects"]:
    model, cfg = load_model(subject["dir"], subject["numerics"])
    recorder = ParameterRecorder(model, config.index_offset)
    with (Recorder(model.entropy_model, config.index_offset) if config.index_offset
          and not is_autoregressive(model) else _nothing()):
      codec = _codec(model, cfg, config.precision)  # traced (with the offset) on first use
      folder = work / subject["key"]
      for name, _ in job["images"]:
        stream, _ = bitstream.read(folder / f"{name}.cbx")
        saved = np.load(folder / f"{name}.npz")
        reference = (np.load(folder / f"{name}.bfloat16.npy") if config.precision == "bfloat16"
                     else saved["reference"])
        row = {"key": subject["key"], "image": name, "config": job["config"]}
        start = time.perf_counter()
        try:
          decoded = codec.decode(stream)
          row["outcome"] = "identical" if np.array_equal(decoded, reference) else "different"
          row["max_abs_pixel_diff"] = int(np.abs(decoded.astype(np.int32)
                                                 - reference.astype(np.int32)).max())
          row["error"] = ""
        except Exception as error:  # noqa: BLE001 - any refusal is an outcome to report
          row["outcome"], row["max_abs_pixel_diff"] = "refused", -1
          lines = str(error).strip().splitlines()
          row["error"] = f"{error.__class__.__name__}: {lines[0] if lines else ''}"
        row["decode_s"] = time.perf_counter() - start
        encoder = load_encoder_records(saved)
        decoder = recorder.teacher_forced(list(stream.strings), (stream.height, stream.width),
                                          encoder)
        row.update(compare_records(encoder, decoder))
        rows.append(row)
  info = worker_info()
  for row in rows:
    row.update(info)
  pathlib.Path(job["result"]).write_text(json.dumps(rows))


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def worker_info():
  import tensorflow as tf
  return {"intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
          "gpus_visible": len(tf.config.list_physical_devices("GPU"))}


def worker_main(job_path):
  """``python -m cbexp.conformance --worker JOB.json``: internal, one configuration's process."""
  job = json.loads(pathlib.Path(job_path).read_text())
  import tensorflow as tf
  tf.get_logger().setLevel("ERROR")
  # Before the first op: fixed once TensorFlow has started.
  tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
  if job["role"] == "encode":
    encode_worker(job)
  else:
    decode_worker(job)


def worker_env(config):
  env = {k: v for k, v in os.environ.items() if k not in NUMERIC_ENV}
  env.update(config.env)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def run_worker(job, config, work, timeout):
  path = work / f"job_{job['role']}_{job.get('config', 'reference')}.json"
  path.write_text(json.dumps(job))
  start = time.perf_counter()
  try:
    result = subprocess.run([sys.executable, "-m", "cbexp.conformance", "--worker", str(path)],
                            env=worker_env(config), capture_output=True, text=True,
                            timeout=timeout)
  except subprocess.TimeoutExpired:
    raise ConformanceError(f"the {job['role']} process ({job.get('config', 'reference')}) did "
                           f"not finish within {timeout} s (timeout=)") from None
  if result.returncode:
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    raise ConformanceError(f"the {job['role']} process ({job.get('config', 'reference')}) "
                           f"failed: {lines[-1] if lines else result.returncode}")
  return time.perf_counter() - start


# --- the matrix ----------------------------------------------------------------------------------
def build_untrained(names, overrides, seed, work):
  """Untrained models saved as model directories, so that every process loads the same weights."""
  from cbexp.codec.savedmodel import build_untrained as build
  from cbexp.codec.model_dir import save_model_dir
  directories = []
  for name in names:
    try:
      model, cfg = build([f"entropy={name}"] + overrides, seed=seed)
    except Exception as e:  # noqa: BLE001 - Hydra's message names the missing option
      raise ConformanceError(f"cannot compose entropy={name} {' '.join(overrides)}: "
                             f"{str(e).strip().splitlines()[0]}") from None
    directories.append(str(save_model_dir(model, cfg, work / "models" / f"untrained_{name}")))
  return directories


def describe_model(directory):
  from cbexp.codec.model_dir import load_config
  cfg = load_config(pathlib.Path(directory) / "config.yaml")
  return str(cfg.entropy.name), float(cfg.get("lmbda", float("nan")))


def gpu_visible():
  import tensorflow as tf
  return bool(tf.config.list_physical_devices("GPU"))


def summarize(per_image):
  import pandas as pd
  frame = pd.DataFrame(per_image)
  rows = []
  for (key, numerics, config), group in frame.groupby(["key", "numerics", "config"], sort=False):
    symbols = int(group.symbols.sum())
    # A different image with every symbol right (the teacher-forced decoder agrees everywhere,
    # so the real decoder stayed in sync): the float synthesis rounded a few pixels otherwise.
    # Otherwise it is a wrong image (decoded without an error from desynchronised symbols).
    different = group.outcome == "different"
    pixels = different & (group.positions_mismatched == 0)
    wrong = different & (group.positions_mismatched > 0)
    corrupted = wrong | (group.outcome == "refused")
    rows.append({
        "model": group.model.iloc[0], "lmbda": group.lmbda.iloc[0], "numerics": numerics,
        "config": config, "trained": bool(group.trained.iloc[0]), "images": len(group),
        "images_identical": int((group.outcome == "identical").sum()),
        "images_corrupted": int(corrupted.sum()),
        "images_refused": int((group.outcome == "refused").sum()),
        "images_wrong": int(wrong.sum()),
        "images_pixels_differ": int(pixels.sum()),
        "images_with_mismatches": int((group.positions_mismatched > 0).sum()),
        "symbols": symbols,
        "mismatches_per_million": 1e6 * group.positions_mismatched.sum() / max(symbols, 1),
        "index_mismatches": int(group.index_mismatches.sum()),
        "symbol_mismatches": int(group.symbol_mismatches.sum()),
        "max_abs_mean_diff": float(group.max_abs_mean_diff.max()),
        "max_abs_pixel_diff": int(group.max_abs_pixel_diff.max()),
        "decode_s_median": float(group.decode_s.median()),
        "errors": "; ".join(sorted(set(e for e in group.error if e)))[:500],
        "model_dir": group.model_dir.iloc[0]})
  return frame, pd.DataFrame(rows)


def print_summary(summary, notes):
  columns = ["model", "lmbda", "numerics", "config", "images", "images_identical",
             "images_corrupted", "images_refused", "images_wrong", "images_pixels_differ",
             "mismatches_per_million",
             "index_mismatches", "symbol_mismatches", "max_abs_pixel_diff"]
  print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
  for note in notes:
    print(f"note: {note}")


def log_mlflow(uri, experiment, summary, info, paths):
  import mlflow
  mlflow.set_tracking_uri(uri)
  mlflow.set_experiment(experiment)
  for _, row in summary.iterrows():
    with mlflow.start_run(run_name=f"conformance-{row.model}-{row.numerics}-{row.config}"):
      mlflow.set_tags({"kind": "conformance", "entropy": row.model, "cpu": info["cpu"],
                       "tf_version": info["tf_version"]})
      mlflow.log_params({"model": row.model, "lmbda": row.lmbda, "numerics": row.numerics,
                         "config": row.config, "config_about": CONFIGS[row.config].about,
                         "config_env": json.dumps(CONFIGS[row.config].env),
                         "config_threads": CONFIGS[row.config].threads,
                         "images": row.images, "model_dir": row.model_dir[:250],
                         "command": info["command"][:250]})
      mlflow.log_metrics({f"conformance/{k}": float(row[k]) for k in (
          "images_identical", "images_corrupted", "images_refused", "images_wrong",
          "images_pixels_differ",
          "mismatches_per_million", "index_mismatches", "symbol_mismatches",
          "max_abs_pixel_diff", "decode_s_median", "symbols")})
      for path in paths:
        mlflow.log_artifact(str(path))


def run(args, overrides, argv):
  out = pathlib.Path(args["out"])
  if args["work"]:
    work = pathlib.Path(args["work"])
    work.mkdir(parents=True, exist_ok=True)
  else:
    import tempfile
    work = pathlib.Path(tempfile.mkdtemp(prefix="cbexp_conformance_"))
  try:
    return _run(args, overrides, argv, out, work)
  finally:
    if not args["work"]:
      import shutil
      shutil.rmtree(work, ignore_errors=True)


def _run(args, overrides, argv, out, work):
  from cbexp.evaluation.bench import machine_info
  from cbexp.images import list_images
  started = time.perf_counter()
  paths = list_images(args["images"])
  if args["max_images"]:
    paths = paths[:args["max_images"]]
  if not paths:
    raise ConformanceError(f"no images in {args['images']}")
  images = [(pathlib.Path(p).stem, str(p)) for p in paths]
  notes = []
  configs = list(args["configs"])
  if "gpu" in configs or not args["configs_given"]:  # by default: the GPU when there is one
    if gpu_visible():
      configs = configs if "gpu" in configs else configs + ["gpu"]
    else:
      configs = [c for c in configs if c != "gpu"]
      notes.append("no GPU visible: the gpu configuration was skipped")
  directories = [str(pathlib.Path(d)) for d in args["model_dir"]]
  trained = {d: True for d in directories}
  for d in build_untrained(args["entropy"], overrides, args["seed"], work):
    directories.append(d)
    trained[d] = False
  subjects = []
  for d in directories:
    model, lmbda = describe_model(d)
    for numerics in args["numerics"]:
      key = f"{len(subjects):02d}_{model}_{numerics}"
      subjects.append(dict(dir=d, numerics=numerics, key=key, model=model, lmbda=lmbda,
                           trained=trained[d]))
  precisions = sorted({CONFIGS[c].precision for c in configs})
  base = dict(work=str(work.resolve()), subjects=subjects, images=images, precisions=precisions)
  timings = {}
  print(f"conformance: {len(subjects)} model(s) x {len(images)} image(s); encoding in the "
        f"reference configuration", file=sys.stderr)
  timings["encode"] = run_worker(dict(base, role="encode", threads=2), CONFIGS["reference"],
                                 work, args["timeout"])
  per_image = []
  for name in configs:
    print(f"conformance: decoding in {name} ({CONFIGS[name].about})", file=sys.stderr)
    result = work / f"result_{name}.json"
    timings[name] = run_worker(dict(base, role="decode", config=name,
                                    threads=CONFIGS[name].threads, result=str(result)),
                               CONFIGS[name], work, args["timeout"])
    per_image += json.loads(result.read_text())
  by_key = {s["key"]: s for s in subjects}
  for row in per_image:
    subject = by_key[row["key"]]
    row.update(model=subject["model"], lmbda=subject["lmbda"], numerics=subject["numerics"],
               trained=subject["trained"], model_dir=subject["dir"])
  frame, summary = summarize(per_image)
  info = machine_info()
  info.update(command="python -m cbexp.conformance " + " ".join(argv),
              wall_s=time.perf_counter() - started,
              process_wall_s=timings, reference_config=CONFIGS["reference"].about)
  if any(pathlib.Path(p).name.startswith("kodim") for _, p in images) and any(trained.values()):
    notes.append(TRAINING_NOTE)
  notes.append("each configuration decodes in a fresh process (environment set before "
               "TensorFlow imports); only y's symbols are counted (z has fixed tables)")
  out.mkdir(parents=True, exist_ok=True)
  summary_path, per_image_path = out / "conformance.csv", out / "conformance_per_image.csv"
  summary.to_csv(summary_path, index=False)
  frame.to_csv(per_image_path, index=False)
  json_path = out / "conformance.json"
  json_path.write_text(json.dumps({
      "machine": {k: v for k, v in info.items() if k not in ("command", "wall_s",
                                                               "process_wall_s")},
      "command": info["command"], "wall_s": info["wall_s"], "process_wall_s": timings,
      "configs": {name: dataclasses.asdict(CONFIGS[name]) for name in ["reference"] + configs},
      "images": [n for n, _ in images], "notes": notes,
      "summary": summary.to_dict(orient="records")}, indent=1, default=str))
  print_summary(summary, notes)
  print(f"wrote {summary_path}, {per_image_path} and {json_path} ({info['wall_s']:.0f} s; "
        f"processes: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
  if args["mlflow"]:
    log_mlflow(args["mlflow"], args["experiment"], summary, info, [summary_path, per_image_path,
                                                                    json_path])
  return summary


def main(argv=None):
  from cbexp.cli.common import HELP_FLAGS, config_groups_help, quiet_unless_debug
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--worker"] and len(argv) == 2:
    quiet_unless_debug()
    worker_main(argv[1])
    return 0
  if any(a in HELP_FLAGS for a in argv):
    print(__doc__.strip() + "\n\n" + config_groups_help())
    return 0
  quiet_unless_debug()
  from cbexp.images import DataError
  try:
    args, overrides = parse_args(argv)
    run(args, overrides, argv)
  except (ConformanceError, DataError, FileNotFoundError) as e:
    if os.environ.get("CBEXP_DEBUG"):
      raise
    print(f"cbexp.conformance: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
