"""Decode-time benchmark (``cbexp bench``, ``run``): per model and image, the full encoder and
decoder and the decoder stage by stage (``EntropyModel.decode_stages``, each stage timed in
isolation), with bpp (the whole .cbx file), PSNR, parameter and MAC counts, and for a reduced
decoding precision the change against float32 and the speed-up Amdahl's law predicts from the
CPU's own bfloat16 gain. The protocol and how to read the tables: docs, guides, benchmarking.
"""

import dataclasses
import itertools
import pathlib
import sys
import time

import numpy as np
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cbexp.entropy.base import DECODE_STAGES
from cbexp.errors import CbexpError
from cbexp.evaluation import metrics

STAGES = DECODE_STAGES + ("synthesis",)
UNTRAINED_NOTE = (
  "untrained weights: network work is that of trained models, but untrained "
  "latents are large and coded with escape codes, so range-coding times and "
  "sizes are not representative of trained models"
)
# A reduced-precision LRP changes y_hat by its rounding only (0.5 * tanh(.): far below this); a
# differently decoded symbol would move it by about 1.
SYMBOL_CHANGE = 0.25


class BenchError(CbexpError, ValueError):
  pass


@dataclasses.dataclass
class BenchOptions:
  """What to benchmark and how (conf/bench.yaml, checked by ``options``)."""

  default_entropy: list  # the untrained models when the overrides name none
  model: list  # trained models, by reference (cbexp.load)
  images: str
  max_images: int
  repeats: int
  precision: list  # float32 first: the reference the others are compared with
  numerics: list
  threads: int
  seed: int
  out: str
  mlflow: str = None
  experiment: str = "cbexp-bench"


def options(cfg):
  """conf/bench.yaml's keys (composed by the command) -> BenchOptions, or BenchError."""
  from cbexp.entropy.exact import NUMERICS
  from cbexp.models.precision import PRECISIONS

  for key, minimum in (("repeats", 1), ("max_images", 0), ("threads", 0)):
    if cfg[key] < minimum:
      raise BenchError(f"{key} must be >= {minimum}, got {cfg[key]}")
  precision = [str(p) for p in cfg.precision]
  for p in precision:
    if p not in PRECISIONS:
      raise BenchError(f"precision must be among {PRECISIONS}, got {p!r}")
  numerics = [str(n) for n in cfg.numerics]
  if not numerics or set(numerics) - set(NUMERICS):
    raise BenchError(f"numerics must be among {NUMERICS}, got {','.join(numerics)!r}")
  if not cfg.images:
    raise BenchError("no images: give images=<folder> or set CBEXP_KODAK_DIR")
  return BenchOptions(
    default_entropy=[str(e) for e in cfg.default_entropy],
    model=[str(m) for m in cfg.model],
    images=str(cfg.images),
    max_images=cfg.max_images,
    repeats=cfg.repeats,
    precision=list(dict.fromkeys(["float32"] + precision)),
    numerics=numerics,
    threads=cfg.threads,
    seed=cfg.seed,
    out=str(cfg.out),
    mlflow=cfg.mlflow,
    experiment=str(cfg.experiment),
  )


def load_images(folder, max_images):
  """[(name, uint8 tensor)] of a folder's images, sorted by name (cbexp.images: the suffixes,
  EXIF orientation and conversions of every command)."""
  import tensorflow as tf

  from cbexp import images

  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise BenchError(f"images folder {folder} does not exist")
  paths = images.list_images(folder)
  if max_images:
    paths = paths[:max_images]
  return [(pathlib.Path(p).name, tf.constant(images.load_image(p))) for p in paths]


def timed_call(fn, *args):
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def bfloat16_conv_speedup(repeats=5):
  """Measured float32 / bfloat16 time of one plain transposed convolution of the largest
  synthesis layer shape (5x5, 192 -> 192 channels, 128x192 -> 256x384, Kodak): how much faster
  this CPU multiplies in bfloat16. No decoder stage run in bfloat16 can gain more than this."""
  import tensorflow as tf

  rng = tf.random.Generator.from_seed(0)
  x, kernel = rng.normal([1, 128, 192, 192]), 0.05 * rng.normal([5, 5, 192, 192])
  times = {}
  for dtype in (tf.float32, tf.bfloat16):
    conv = tf.function(lambda x, k: tf.nn.conv2d_transpose(x, k, [1, 256, 384, 192], 2, "SAME"))
    args = (tf.cast(x, dtype), tf.cast(kernel, dtype))
    conv(*args).numpy()  # trace and warm up
    times[dtype] = np.median([timed_call(lambda: conv(*args).numpy())[1] for _ in range(repeats)])
  return times[tf.float32] / times[tf.bfloat16]


# --- staged decoding: the decoder's own stages, each timed in isolation ----------------------
class StagedDecoder:
  """``model.decompress``'s work stage by stage: the z string, the entropy model's
  ``decode_stages`` and the synthesis. Each stage call is a tf.function of its own, keyed by
  its position in the decode (shapes relaxed: one trace per image orientation)."""

  def __init__(self, model):
    self.model = model
    self.reset()

  def reset(self):
    """Forgets the traced stages (after the decoding precision changed)."""
    self._functions = []

  def run(self, strings, image_shape):
    """-> (x_hat float [1, H, W, 3] padded, y_hat, {stage: seconds})."""
    import tensorflow as tf

    from cbexp.models.compression import PAD_MULTIPLE, padded_shape

    self.times, self._position = dict.fromkeys(STAGES, 0.0), 0
    strings = tf.constant(strings, tf.string)
    z_shape = padded_shape(tf.constant(image_shape, tf.int32)) // PAD_MULTIPLE
    z_hat = self.stage("range_coding", self.model.z_coder.decompress, strings[:1], z_shape)
    em = self.model.entropy_model
    y_hat = em.decode_stages(
      [strings[1 + i : 2 + i] for i in range(em.num_strings)], z_hat, z_shape * 4, self.stage
    )
    x_hat = self.stage("synthesis", self.model.decoding_synthesis, y_hat)
    return x_hat, y_hat, self.times

  def stage(self, name, fn, *args):
    """The ``stage`` of ``decode_stages``: fn(*args) as a tf.function, timed under ``name``."""
    import tensorflow as tf

    if name not in self.times:
      raise BenchError(
        f"{type(self.model.entropy_model).__name__}.decode_stages: unknown "
        f"stage {name!r} (known: {', '.join(DECODE_STAGES)})"
      )
    if self._position == len(self._functions):
      self._functions.append(tf.function(fn, reduce_retracing=True))
    function = self._functions[self._position]
    self._position += 1
    result, seconds = timed_call(function, *args)
    self.times[name] += seconds
    return result


# --- the models ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Subject:
  name: str  # the model's label in the tables
  model: object
  cfg: object
  trained: bool
  numerics: str = "float"


def subject_name(name, numerics):
  return name if numerics == "float" else f"{name}+{numerics}"


def build_subjects(opts, overrides):
  """The trained models of ``opts.model`` (each once per numerics) or, without them, untrained
  models from the overrides (``opts.default_entropy`` when they name no entropy model), each
  variant of a swept key with the same fixed-seed weights."""
  if opts.model:
    if overrides:
      raise BenchError(
        f"{' '.join(overrides)}: model-config overrides build untrained models; "
        "trained models (model=) are benchmarked as they were saved"
      )
    return trained_subjects(opts.model, opts.numerics)
  from cbexp.config import expand_sweeps
  from cbexp.load import build_untrained

  overrides = list(overrides)
  if not any(o.partition("=")[0] == "entropy" for o in overrides):
    overrides.insert(0, "entropy=" + ",".join(opts.default_entropy))
  subjects = []
  for (label, variant), numerics in itertools.product(expand_sweeps(overrides), opts.numerics):
    try:
      model, cfg = build_untrained([f"entropy.numerics={numerics}"] + variant, seed=opts.seed)
    except (HydraException, OmegaConfBaseException) as e:  # the message names the option
      raise BenchError(
        f"cannot compose {' '.join(variant)}: {str(e).strip().splitlines()[0]}"
      ) from None
    subjects.append(
      Subject(subject_name(str(cfg.entropy.name), numerics) + label, model, cfg, False, numerics)
    )
  return subjects


def trained_subjects(refs, numerics):
  from cbexp.load import load_model

  subjects = []
  for ref, value in itertools.product(refs, numerics):
    model, cfg = load_model(ref, numerics=value)
    subjects.append(Subject(subject_name(str(cfg.entropy.name), value), model, cfg, True, value))
  return distinct_names(subjects)


def distinct_names(subjects):
  """Subjects whose labels are unique (the tables key their rows by label): models of one entropy
  model on several backbones are told apart by the backbone, others by their position."""
  names = [s.name for s in subjects]
  for subject in subjects:
    if names.count(subject.name) > 1:
      subject.name = f"{subject.name} ({subject.cfg.transform.name})"
  names = [s.name for s in subjects]
  for i, subject in enumerate(subjects):
    if names.count(subject.name) > 1:
      subject.name = f"{subject.name} #{i + 1}"
  return subjects


# --- timing ---------------------------------------------------------------------------------------
def file_bytes(compressed, entropy_name):
  """Bytes of the .cbx file of ``compressed``: header, symbol checks and checksum included (the
  fingerprint's value does not change the size)."""
  from cbexp.codec.bitstream import FINGERPRINT_BYTES, Bitstream

  height, width = compressed.image_shape
  return len(
    Bitstream(
      entropy_model=entropy_name,
      fingerprint="00" * FINGERPRINT_BYTES,
      height=height,
      width=width,
      strings=compressed.strings,
      checks=compressed.checks,
    ).to_bytes()
  )


def time_image(subject, stages, image, repeats):
  """``repeats`` timed encodes, decodes and staged decodes of one image -> (row of medians,
  compressed, decoded, y_hat); the staged decode must reproduce the decoder's y_hat."""
  model = subject.model
  encode, decode, staged = [], [], []
  for _ in range(repeats):
    compressed, seconds = timed_call(model.compress, image)
    encode.append(seconds)
    (decoded, y_hat), seconds = timed_call(
      lambda c: model.decompress(c, return_latent=True), compressed
    )
    decode.append(seconds)
    _, staged_y_hat, times = stages.run(compressed.strings, compressed.image_shape)
    if not np.array_equal(staged_y_hat.numpy(), y_hat.numpy()):
      raise RuntimeError(
        f"{subject.name}: the staged decode does not reproduce the decoder's "
        "y_hat: decode_stages differs from decompress"
      )
    staged.append(times)
  height, width = compressed.image_shape
  size = file_bytes(compressed, str(subject.cfg.entropy.name))
  row = {
    "height": height,
    "width": width,
    "bytes": size,
    "bpp": metrics.bits_per_pixel(size, height, width),
    "encode_s": float(np.median(encode)),
    "decode_s": float(np.median(decode)),
    "psnr": metrics.psnr(image, decoded),
  }
  for stage in STAGES:
    row[f"stage_{stage}_s"] = float(np.median([t[stage] for t in staged]))
  row["stage_sum_s"] = float(np.median([sum(t.values()) for t in staged]))
  row["decode_over_stage_sum"] = row["decode_s"] / row["stage_sum_s"]
  return row, compressed, decoded, y_hat


def against_float32(subject, precision, name, decoded, y_hat, reference):
  """Columns of a reduced-precision decode against the float32 decoder's (``reference``:
  decoded, y_hat); its symbols must be the same."""
  ref_decoded, ref_y_hat = reference
  difference = float(np.abs(y_hat.numpy() - ref_y_hat.numpy()).max())
  if difference >= SYMBOL_CHANGE:
    raise RuntimeError(
      f"{subject.name}, {precision}, {name}: y_hat differs from the float32 "
      f"decoder's by {difference}: decoded symbols differ"
    )
  return {
    "y_hat_max_abs_diff_vs_float32": difference,
    "y_hat_identical_to_float32": difference == 0,
    "psnr_vs_float32_db": metrics.psnr(ref_decoded, decoded),
    "max_abs_diff_vs_float32": metrics.max_abs_difference(decoded, ref_decoded),
  }


def bench_model(subject, images, precisions, repeats, progress):
  """-> per-image rows (one per image and precision)."""
  model, stages = subject.model, StagedDecoder(subject.model)
  rows, reference = [], {}
  for precision in precisions:
    model.set_decode_precision(precision)
    stages.reset()
    warmed = set()
    for name, image in images:
      if tuple(image.shape) not in warmed:  # trace every graph for this orientation, untimed
        compressed = model.compress(image)
        model.decompress(compressed)
        stages.run(compressed.strings, compressed.image_shape)
        warmed.add(tuple(image.shape))
      row, compressed, decoded, y_hat = time_image(subject, stages, image, repeats)
      row = {
        "entropy": subject.name,
        "numerics": subject.numerics,
        "precision": precision,
        "image": name,
        **row,
      }
      if precision == "float32":
        if not np.array_equal(y_hat.numpy(), compressed.y_hat.numpy()):
          raise RuntimeError(f"{subject.name}: decoder's y_hat differs from the encoder's")
        reference[name] = (decoded, y_hat)
      else:
        row.update(against_float32(subject, precision, name, decoded, y_hat, reference[name]))
      rows.append(row)
      progress.update(1)
  model.set_decode_precision("float32")
  return rows


# --- the tables ---------------------------------------------------------------------------------
def spread(values, prefix):
  values = np.asarray(values, np.float64)
  q1, median, q3 = np.percentile(values, [25, 50, 75])
  return {
    f"{prefix}_median": median,
    f"{prefix}_q1": q1,
    f"{prefix}_q3": q3,
    f"{prefix}_min": values.min(),
    f"{prefix}_max": values.max(),
  }


def _rows(frame, entropy, precision="float32"):
  return frame[(frame.entropy == entropy) & (frame.precision == precision)].set_index("image")


def reduced_precision_columns(subject, group, frame, conv_speedup):
  """A reduced precision's summary against the same model's float32 decodes, with the decode
  speed-up predicted if every reduced-precision stage gained ``conv_speedup`` (Amdahl's law)."""
  f32 = _rows(frame, subject.name).loc[group.index]
  row = spread(f32.decode_s / group.decode_s, "speedup_vs_float32")
  row.update(
    psnr_vs_float32_db_min=group.psnr_vs_float32_db.min(),
    psnr_change_db_mean=float((group.psnr - f32.psnr).mean()),
    y_hat_identical_to_float32=bool(group.y_hat_identical_to_float32.all()),
    y_hat_max_abs_diff_vs_float32=group.y_hat_max_abs_diff_vs_float32.max(),
  )
  if conv_speedup:
    # The synthesis, and the LRP where it is outside the entropy loop, run in reduced precision.
    reduced = f32.stage_synthesis_s + (
      f32.stage_lrp_s if subject.model.entropy_model.lrp_outside_entropy_loop else 0.0
    )
    predicted = f32.decode_s / (f32.decode_s - reduced * (1 - 1 / conv_speedup))
    row["speedup_vs_float32_amdahl_median"] = float(predicted.median())
  return row


def kmac_columns(model, height, width):
  """decode_kmac_per_pixel_<stage> and encode_kmac_per_pixel_total; none for a model without
  a MAC count."""
  from cbexp.evaluation.complexity import decode_kmac_per_pixel, encode_kmac_per_pixel

  try:
    row = {
      f"decode_kmac_per_pixel_{stage}": value
      for stage, value in decode_kmac_per_pixel(model, height, width).items()
    }
    row["encode_kmac_per_pixel_total"] = encode_kmac_per_pixel(model, height, width)["total"]
  except ValueError:
    return {}
  return row


def summary_row(subject, precision, group, frame, info):
  """One model and precision: spreads over images, counts, quality, machine facts."""
  model = subject.model
  row = {
    "entropy": subject.name,
    "precision": precision,
    "num_images": len(group),
    "trained_weights": subject.trained,
    "trainable_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
  }
  row.update(spread(group.encode_s, "encode_s"))
  row.update(spread(group.decode_s, "decode_s"))
  for stage in STAGES:
    row[f"stage_{stage}_s_median"] = group[f"stage_{stage}_s"].median()
  row.update(spread(group.stage_sum_s, "stage_sum_s"))
  row.update(spread(group.decode_over_stage_sum, "decode_over_stage_sum"))
  charm = _rows(frame, "charm")
  if len(charm) and set(group.index) <= set(charm.index):
    row.update(spread(charm.decode_s[group.index] / group.decode_s, "speedup_vs_charm"))
  if precision != "float32":
    row.update(reduced_precision_columns(subject, group, frame, info.get("bfloat16_conv_speedup")))
  row.update(bpp_mean=group.bpp.mean(), psnr_mean=group.psnr.mean())
  row.update(kmac_columns(model, int(group.height.iloc[0]), int(group.width.iloc[0])))
  row.update(info)
  row["note"] = "" if subject.trained else UNTRAINED_NOTE
  return row


def summarize(per_image, subjects, info):
  """-> (per-image DataFrame, summary DataFrame: one row per model and precision)."""
  import pandas as pd

  frame = pd.DataFrame(per_image)
  summary = [
    summary_row(subject, precision, group.set_index("image"), frame, info)
    for subject in subjects
    for precision, group in frame[frame.entropy == subject.name].groupby("precision", sort=False)
  ]
  return frame, pd.DataFrame(summary)


def log_mlflow(uri, experiment, summary, per_image_path, summary_path):
  import mlflow

  mlflow.set_tracking_uri(uri)
  mlflow.set_experiment(experiment)
  for _, row in summary.iterrows():
    with mlflow.start_run(run_name=f"bench-{row.entropy}-{row.precision}"):
      mlflow.set_tags(
        {
          "entropy": row.entropy,
          "precision": row.precision,
          "tf_version": row.tf_version,
          "cpu": row.cpu,
          "kind": "bench",
        }
      )
      metrics_row = {
        f"bench/{k}": float(v)
        for k, v in row.items()
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)
      }
      mlflow.log_metrics(metrics_row)
      mlflow.log_artifact(str(per_image_path))
      mlflow.log_artifact(str(summary_path))


def print_summary(summary):
  columns = [
    "entropy",
    "precision",
    "num_images",
    "trainable_parameters",
    "encode_s_median",
    "decode_s_median",
    "decode_s_q1",
    "decode_s_q3",
    "stage_sum_s_median",
    "decode_over_stage_sum_median",
    "speedup_vs_charm_median",
    "speedup_vs_charm_q1",
    "speedup_vs_charm_q3",
    "speedup_vs_float32_median",
    "speedup_vs_float32_amdahl_median",
    "psnr_change_db_mean",
    "psnr_vs_float32_db_min",
    "decode_kmac_per_pixel_total",
  ]
  shown = summary[[c for c in columns if c in summary]]
  print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
  for note in set(summary.note) - {""}:
    print(f"note: {note}")
  row = summary.iloc[0]
  print(
    f"machine: {row.cpu}, {row.cpus_available} CPUs, intra-op threads "
    f"{row.intra_op_threads} (0 = TF default), TF {row.tf_version}, oneDNN {row.onednn}, "
    f"1-min load average at start {row.load_average_1min:.2f}"
  )
  if "bfloat16_conv_speedup" in row and np.isfinite(row.bfloat16_conv_speedup):
    print(
      f"bfloat16 on this CPU (AVX512-BF16 {row.cpu_avx512_bf16}, AMX {row.cpu_amx_bf16}): "
      f"the largest synthesis convolution alone runs {row.bfloat16_conv_speedup:.2f}x "
      f"faster than in float32; speedup_vs_float32_amdahl is the decode speed-up predicted "
      f"if every reduced-precision stage gained exactly that (Amdahl's law; the entropy "
      f"decoding stays float32)"
    )


def write_tables(opts, frame, summary):
  """Writes ``opts.out`` and ``<out>_per_image.csv``, prints the summary, logs to MLflow."""
  out = pathlib.Path(opts.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  per_image_path = out.with_name(out.stem + "_per_image.csv")
  summary.to_csv(out, index=False)
  frame.to_csv(per_image_path, index=False)
  print_summary(summary)
  print(f"wrote {out} and {per_image_path}")
  if opts.mlflow:
    log_mlflow(opts.mlflow, opts.experiment, summary, per_image_path, out)


def run(cfg, overrides=()):
  """``cbexp bench``: conf/bench.yaml's keys ``cfg`` and Hydra overrides of the untrained
  models' config (``transform=tiny``, ``entropy.<key>=a,b`` to compare values side by side)."""
  opts = options(cfg)
  import tensorflow as tf
  from tqdm import tqdm

  from cbexp.evaluation.machine import machine_info

  tf.get_logger().setLevel("ERROR")  # retracing notices: one trace per orientation is wanted
  if opts.threads:  # before the first op (decoding the images): fixed once TF has started
    tf.config.threading.set_intra_op_parallelism_threads(opts.threads)
  images = load_images(opts.images, opts.max_images)
  info = machine_info()
  if len(opts.precision) > 1:
    info["bfloat16_conv_speedup"] = bfloat16_conv_speedup()
  subjects = build_subjects(opts, overrides)
  per_image = []
  total = len(subjects) * len(images) * len(opts.precision)
  with tqdm(total=total, desc="bench", file=sys.stderr) as progress:
    for subject in subjects:
      per_image += bench_model(subject, images, opts.precision, opts.repeats, progress)
  write_tables(opts, *summarize(per_image, subjects, info))
