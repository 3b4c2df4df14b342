"""Latency benchmark: ``python -m cbexp.bench [key=value ...]``.

Example: ``python -m cbexp.bench images=$CBEXP_KODAK_DIR max_images=2 repeats=1 transform=tiny``
(a quick look: ChARM, checkerboard and hyperprior at tiny width, untrained, on two images).

Protocol (README "Decoding speed"; as in ELIC supplementary section 2 and He et al. 2021):
* each entropy model is built at the configuration given (paper configuration by default) with
  fixed-seed weights, or restored from ``model_dir=`` (trained weights: same network work, but
  only trained weights give representative range-coding times: untrained latents are coded
  with expensive escape codes);
* warm-up: one full encode + decode and one staged decode per image *orientation* (shape), so
  that no timed call includes tracing (the graphs have ``None`` spatial dimensions);
* per image, ``repeats`` times each: the full encoder (``model.compress``, uint8 in -> bytes out),
  the full decoder (``model.decompress``, bytes in -> uint8 out), and a *staged* decode calling
  the decoder's own stage functions one by one, each timed in isolation on the same tensors:
  range decoding (z and y strings), hyper-synthesis, entropy parameters (with the context model),
  the autoregressive model's serial loop, LRP, synthesis. The staged decode must reproduce the
  full decoder's y_hat exactly (checked). The per-image figure is the median over repeats;
* per model: median over images, with the inter-quartile range and min/max; decode speed-up
  against ChARM computed per image (ChARM time / model time) then summarized the same way;
* reduced precision (``precision=bfloat16``): the decoded symbols must be those of the float32
  decoder (y_hat may differ only by the LRP's rounding, where the LRP runs in bfloat16); the
  CPU's own bfloat16 gain is measured on one plain convolution (``bfloat16_conv_speedup``) and
  turned into the decode speed-up it predicts (Amdahl's law on the float32 stage times).
Outputs: ``out`` (one row per model and precision) and ``<out>_per_image.csv``; optional MLflow.

Arguments (``key=value``; lists comma-separated):
  entropy=charm,checkerboard,hyperprior   models to benchmark
  images=<folder>              PNG/JPEG images (default: $CBEXP_KODAK_DIR)
  max_images=N                 only the first N images (sorted by name); 0 = all
  repeats=N                    timed repetitions per image (default 3)
  precision=float32[,bfloat16] decoding precision(s) of the synthesis and, where it feeds no
                               entropy parameter, the LRP (float32 is the reference)
  out=bench.csv                summary CSV
  mlflow=<tracking uri>        also log one MLflow run per model and precision
  experiment=cbexp-bench       MLflow experiment
  model_dir=<dir>[,<dir>...]   trained model directories instead of ``entropy=`` models
  numerics=float[,exact]       entropy-parameter numerics (cbexp.entropy.exact): with both, each
                               model is benchmarked twice in this process, the exact one named
                               <entropy>+exact, e.g. ``model_dir=<dir> numerics=float,exact``
  compare=<key>=<v1>,<v2>...   each ``entropy=`` model once per value of one model-config key,
                               same weights, named <entropy>+<value>; e.g. the checkerboard
                               context at coded positions or on the full grid:
                               ``compare=entropy.context_positions=coded,full_grid``
  threads=N                    TensorFlow intra-op threads (default: TensorFlow's choice)
  seed=0                       weight seed for untrained models
Any other ``key=value`` with a dot, or ``transform=...``, is a Hydra override of the model
config (e.g. ``transform=tiny entropy.hidden_filters=[16,16]``).
"""
import dataclasses
import os
import pathlib
import platform
import sys
import time

import numpy as np

DEFAULTS = dict(entropy="charm,checkerboard,hyperprior", images="", max_images="0",
                repeats="3", precision="float32", out="bench.csv", mlflow="",
                experiment="cbexp-bench", model_dir="", threads="0", seed="0",
                numerics="float", compare="")
# serial_loop: the autoregressive model's per-position loop, where context, g_ep and range
# decoding alternate inside one graph and cannot be timed apart (zero for the other models).
STAGES = ("range_coding", "hyper_synthesis", "entropy_parameters", "serial_loop", "lrp",
          "synthesis")
UNTRAINED_NOTE = ("untrained weights: network work is that of trained models, but untrained "
                  "latents are large and coded with escape codes, so range-coding times and "
                  "sizes are not representative of trained models")


class BenchError(ValueError):
  pass


def split_existing_paths(text):
  """A comma-separated list of folders whose names may contain commas themselves (Hydra's sweep
  job folders do: ``3_entropy=charm,lmbda=0.01``): pieces are joined back while the joined path
  does not exist but a longer one does."""
  pieces, paths = [p for p in text.split(",")], []
  while pieces:
    path = pieces.pop(0)
    while not os.path.isdir(path) and pieces and any(
        os.path.isdir(",".join([path] + pieces[:n])) for n in range(1, len(pieces) + 1)):
      path += "," + pieces.pop(0)
    if path:
      paths.append(path)
  return paths


def parse_args(argv):
  from cbexp.cli.common import parse_key_values
  args, overrides = parse_key_values(argv, DEFAULTS, BenchError,
                                     integers=("max_images", "repeats", "threads", "seed"))
  if args["repeats"] < 1:
    raise BenchError(f"repeats must be >= 1, got {args['repeats']}")
  args["entropy"] = [e for e in args["entropy"].split(",") if e]
  args["precision"] = [p for p in args["precision"].split(",") if p]
  args["model_dir"] = split_existing_paths(args["model_dir"])
  from cbexp.entropy.exact import NUMERICS
  args["numerics"] = [n for n in args["numerics"].split(",") if n]
  if not args["numerics"] or set(args["numerics"]) - set(NUMERICS):
    raise BenchError(f"numerics must be among {NUMERICS}, got {','.join(args['numerics'])!r}")
  if args["compare"]:
    key, sep, values = args["compare"].partition("=")
    if not sep or "." not in key or not values:
      raise BenchError(f"compare must be <config key>=<value>,<value>..., got "
                       f"{args['compare']!r}")
    if args["model_dir"]:
      raise BenchError("compare= varies the config of entropy= models; a trained model_dir "
                       "is benchmarked as it was saved")
    args["compare"] = (key, [v for v in values.split(",") if v])
  from cbexp.models.precision import PRECISIONS
  for p in args["precision"]:
    if p not in PRECISIONS:
      raise BenchError(f"precision must be among {PRECISIONS}, got {p!r}")
  if "float32" not in args["precision"]:
    args["precision"].insert(0, "float32")  # the reference the others are compared with
  args["images"] = args["images"] or os.environ.get("CBEXP_KODAK_DIR", "")
  if not args["images"]:
    raise BenchError("no images: give images=<folder> or set CBEXP_KODAK_DIR")
  return args, overrides


def load_images(folder, max_images):
  """[(name, uint8 tensor)] of a folder's images, sorted by name, through cbexp's one image
  loader (cbexp.data: the suffixes, EXIF orientation and conversions of every command)."""
  import tensorflow as tf

  from cbexp import images
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise BenchError(f"images folder {folder} does not exist")
  paths = images.list_images(folder)
  if max_images:
    paths = paths[:max_images]
  return [(pathlib.Path(p).name, tf.constant(images.load_image(p))) for p in paths]


def machine_info():
  import tensorflow as tf
  from importlib.metadata import version
  cpu = platform.processor() or "unknown"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  flags = set()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
  except OSError:
    pass
  return {"cpu": cpu, "cpus_available": len(os.sched_getaffinity(0)),
          # bfloat16 matrix hardware: AVX512-BF16 doubles float32's multiply rate at best;
          # AMX tiles (Sapphire Rapids and later) give far more.
          "cpu_avx512_bf16": "avx512_bf16" in flags, "cpu_amx_bf16": "amx_bf16" in flags,
          "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
          "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
          "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
          "tf_version": tf.__version__, "tfc_version": version("tensorflow-compression"),
          "load_average_1min": os.getloadavg()[0]}


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
    seconds = []
    for _ in range(repeats):
      _, elapsed = timed_call(lambda: conv(*args).numpy())
      seconds.append(elapsed)
    times[dtype] = np.median(seconds)
  return times[tf.float32] / times[tf.bfloat16]


# --- staged decoding: the decoder's own stage functions, each timed in isolation ------------
class StagedDecoder:
  """Runs ``model.decompress``'s work stage by stage. Subclasses list the stages of one entropy
  model; every stage is a tf.function (shapes relaxed, so one trace per orientation)."""

  def __init__(self, model):
    import tensorflow as tf
    self.model = model
    self.em = model.entropy_model
    self.tf = tf
    self._functions = {}

  def function(self, key, fn):
    if key not in self._functions:
      self._functions[key] = self.tf.function(fn, reduce_retracing=True)
    return self._functions[key]

  def run(self, strings, image_shape):
    """-> (x_hat float [1, H, W, 3] padded, y_hat, {stage: seconds})."""
    from cbexp.models.compression import padded_size, PAD_MULTIPLE
    tf = self.tf
    self.times = dict.fromkeys(STAGES, 0.)
    self.strings = tf.constant(strings, tf.string)
    padded = np.array([padded_size(image_shape[0]), padded_size(image_shape[1])], np.int32)
    z_shape = tf.constant(padded // PAD_MULTIPLE)
    z_hat = self.timed("range_coding", "z", lambda s, shape: self.model.z_coder.decompress(
        s, shape), self.strings[:1], z_shape)
    y_hat = self.decode_latent(z_hat, z_shape * 4)
    x_hat = self.timed("synthesis", ("synthesis", self.model.decode_precision),
                       self.model._low_precision_synthesis, y_hat)
    return x_hat, y_hat, self.times

  def timed(self, stage, key, fn, *args):
    function = self.function(key, fn)
    start = time.perf_counter()
    result = function(*args)
    self.times[stage] += time.perf_counter() - start
    return result

  def y_string(self, i):
    return self.strings[1 + i:2 + i]

  def decode_gaussian(self, key, i, scale_index, mean):
    return self.timed("range_coding", key, lambda s, index, loc: self.em.gaussian.decompress(
        s, index, loc), self.y_string(i), scale_index, mean)

  def decode_latent(self, z_hat, y_shape):
    raise NotImplementedError

  def mean_and_scale_hyper(self, z_hat):
    """The two hyper-synthesis paths of the ChARM-style models."""
    nets = self.em.coding_networks()
    return self.timed("hyper_synthesis", "hs", lambda z: self.em._hyper_features(z, nets), z_hat)


# Each stage list uses the networks decompress uses: ``coding_networks()``, the float layers or
# their exact integer versions (entropy.numerics).
class HyperpriorStages(StagedDecoder):
  def decode_latent(self, z_hat, y_shape):
    em = self.em
    nets = em.coding_networks()
    hyper = self.timed("hyper_synthesis", "hs", nets.hyper_synthesis, z_hat)
    mean, index = self.timed("entropy_parameters", "ep", nets.entropy_parameters, hyper)
    y_hat = self.decode_gaussian("rc", 0, index, mean)
    return self.timed("lrp", "lrp", lambda h, y: y + em._residual(h, decoding=True), hyper,
                      y_hat)


class CheckerboardStages(StagedDecoder):
  def decode_latent(self, z_hat, y_shape):
    from cbexp.entropy.layers import merge_checkerboard, split_checkerboard
    em = self.em
    nets = em.coding_networks()

    def hyper_fn(z):
      hyper, hyper_lrp = em._hyper(z, nets)
      return split_checkerboard(hyper) + (hyper_lrp,)

    hyper_a, hyper_n, hyper_lrp = self.timed("hyper_synthesis", "hs", hyper_fn, z_hat)
    mean_a, index_a = self.timed("entropy_parameters", "ep_anchors",
                                 lambda h: em._anchor_params(h, nets), hyper_a)
    y_hat_a = self.decode_gaussian("rc", 0, index_a, mean_a)
    mean_n, index_n = self.timed("entropy_parameters", "ep_non_anchors",
                                 lambda y, h: em._non_anchor_params(y, h, nets), y_hat_a, hyper_n)
    y_hat_n = self.decode_gaussian("rc", 1, index_n, mean_n)

    def lrp_fn(y_a, y_n, hyper):
      y_hat = merge_checkerboard(y_a, y_n)
      return y_hat + em._residual(hyper, y_hat, decoding=True)

    return self.timed("lrp", "lrp", lrp_fn, y_hat_a, y_hat_n, hyper_lrp)


class CharmStages(StagedDecoder):
  def decode_latent(self, z_hat, y_shape):
    em = self.em
    nets = em.coding_networks()
    hyper_means, hyper_scales = self.mean_and_scale_hyper(z_hat)
    decoded = []
    for i in range(em.num_slices):
      mean, index, mean_support = self.timed(
          "entropy_parameters", ("ep", i),
          lambda hm, hs, dec, i=i: em._slice_params(i, hm, hs, dec, nets),
          hyper_means, hyper_scales, list(decoded))
      y_hat_slice = self.decode_gaussian("rc", i, index, mean)
      decoded.append(self.timed("lrp", ("lrp", i),
                                lambda s, y, i=i: em._with_residual(i, s, y, nets),
                                mean_support, y_hat_slice))
    return self.tf.concat(decoded, axis=-1)


class CharmCheckerboardStages(StagedDecoder):
  def decode_latent(self, z_hat, y_shape):
    from cbexp.entropy.layers import merge_checkerboard
    em = self.em
    nets = em.coding_networks()
    hyper_means, hyper_scales = self.mean_and_scale_hyper(z_hat)
    decoded = []
    for i in range(len(em.slices)):
      features_a, features_n, mean_support = self.timed(
          "entropy_parameters", ("channel_context", i),
          lambda hm, hs, dec, i=i: em._channel_features(i, hm, hs, dec, nets),
          hyper_means, hyper_scales, list(decoded))
      mean_a, index_a = self.timed("entropy_parameters", ("ep_anchors", i),
                                   lambda f, i=i: nets.entropy_parameters[i](f), features_a)
      y_hat_a = self.decode_gaussian(("rc", 2 * i), 2 * i, index_a, mean_a)
      mean_n, index_n = self.timed(
          "entropy_parameters", ("ep_non_anchors", i),
          lambda y_a, f, i=i: em._non_anchor_params(i, y_a, f, nets), y_hat_a, features_n)
      y_hat_n = self.decode_gaussian(("rc", 2 * i + 1), 2 * i + 1, index_n, mean_n)
      decoded.append(self.timed(
          "lrp", ("lrp", i),
          lambda s, y_a, y_n, i=i: em._with_residual(i, s, merge_checkerboard(y_a, y_n), nets),
          mean_support, y_hat_a, y_hat_n))
    return self.tf.concat(decoded, axis=-1)


class AutoregressiveStages(StagedDecoder):
  def decode_latent(self, z_hat, y_shape):
    em = self.em
    hyper = self.timed("hyper_synthesis", "hs", em.hyper_synthesis, z_hat)
    q = self.timed("serial_loop", "serial", em._decode_serial, self.y_string(0), hyper)
    return self.timed("lrp", "lrp", lambda h, q: q + em._residual(h, decoding=True), hyper, q)


def staged_decoder(model):
  from cbexp.entropy.autoregressive import AutoregressiveEntropyModel
  from cbexp.entropy.charm import CharmEntropyModel
  from cbexp.entropy.charm_checkerboard import CharmCheckerboardEntropyModel
  from cbexp.entropy.checkerboard import CheckerboardEntropyModel
  from cbexp.entropy.hyperprior import HyperpriorEntropyModel
  for cls, stages in ((CharmEntropyModel, CharmStages),
                      (CheckerboardEntropyModel, CheckerboardStages),
                      (HyperpriorEntropyModel, HyperpriorStages),
                      (CharmCheckerboardEntropyModel, CharmCheckerboardStages),
                      (AutoregressiveEntropyModel, AutoregressiveStages)):
    if type(model.entropy_model) is cls:
      return stages(model)
  return None  # a model without a stage list: full encode/decode times only


# --- the benchmark ----------------------------------------------------------------------------
@dataclasses.dataclass
class Subject:
  name: str
  model: object
  trained: bool
  numerics: str = "float"


def subject_name(name, numerics):
  return name if numerics == "float" else f"{name}+{numerics}"


def build_subjects(args, overrides):
  import tensorflow as tf
  from cbexp.config import build_model, compose
  from cbexp.codec.model_dir import load_model_dir
  subjects = []
  for directory in args["model_dir"]:
    for numerics in args["numerics"]:
      model, cfg = load_model_dir(directory, numerics=numerics)
      subjects.append(Subject(subject_name(str(cfg.entropy.name), numerics), model, True,
                              numerics))
  if not args["model_dir"]:
    key, values = args["compare"] or (None, [None])
    for name in args["entropy"]:
      for numerics in args["numerics"]:
        for value in values:
          tf.keras.utils.set_random_seed(args["seed"])  # the same weights for each variant
          variant = [f"{key}={value}"] if key else []
          try:
            cfg = compose([f"entropy={name}"] + overrides + [f"entropy.numerics={numerics}"]
                          + variant)
          except Exception as e:  # Hydra's message names the missing option
            raise BenchError(f"cannot compose entropy={name} {' '.join(overrides + variant)}: "
                             f"{str(e).splitlines()[0]}") from None
          model = build_model(cfg)
          model.build_coders()
          label = subject_name(name, numerics) + (f"+{value}" if key else "")
          subjects.append(Subject(label, model, False, numerics))
  return subjects


def psnr(a, b):
  import tensorflow as tf
  return float(tf.image.psnr(tf.cast(a, tf.float32), tf.cast(b, tf.float32), max_val=255.))


def timed_call(fn, *args):
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def bench_model(subject, images, precisions, repeats, progress):
  """-> list of per-image rows (one per image and precision)."""
  import tensorflow as tf
  model = subject.model
  stages = staged_decoder(model)
  rows, reference = [], {}
  for precision in precisions:
    model.set_decode_precision(precision)
    if stages is not None:
      stages._functions.clear()
    warmed = set()
    for name, image in images:
      shape = tuple(image.shape[:2])
      if shape not in warmed:  # trace every graph for this orientation, untimed
        compressed = model.compress(image)
        model.decompress(compressed)
        if stages is not None:
          stages.run(compressed.strings, compressed.image_shape)
        warmed.add(shape)
      encode, decode, staged = [], [], []
      for _ in range(repeats):
        compressed, seconds = timed_call(model.compress, image)
        encode.append(seconds)
        (decoded, y_hat), seconds = timed_call(
            lambda c: model.decompress(c, return_latent=True), compressed)
        decode.append(seconds)
        if stages is not None:
          _, staged_y_hat, times = stages.run(compressed.strings, compressed.image_shape)
          if not np.array_equal(staged_y_hat.numpy(), y_hat.numpy()):
            raise RuntimeError(f"{subject.name}: the staged decode does not reproduce the "
                               f"decoder's y_hat: the stage list is out of date")
          staged.append(times)
      # float32: the decoder reproduces the encoder's y_hat exactly. Reduced precision is
      # checked against the float32 decoder below (its LRP may round differently).
      if precision == "float32" and not np.array_equal(y_hat.numpy(), compressed.y_hat.numpy()):
        raise RuntimeError(f"{subject.name}: decoder's y_hat differs from the encoder's")
      h, w = shape
      row = {"entropy": subject.name, "numerics": subject.numerics, "precision": precision,
             "image": name, "height": h,
             "width": w, "bytes": compressed.num_bytes,
             "bpp": 8. * compressed.num_bytes / (h * w),
             "encode_s": float(np.median(encode)), "decode_s": float(np.median(decode)),
             "psnr": psnr(image, decoded)}
      if staged:
        for stage in STAGES:
          row[f"stage_{stage}_s"] = float(np.median([t[stage] for t in staged]))
        row["stage_sum_s"] = float(np.median([sum(t.values()) for t in staged]))
        row["decode_over_stage_sum"] = row["decode_s"] / row["stage_sum_s"]
      if precision == "float32":
        reference[name] = (decoded, y_hat, compressed.strings)
      else:
        ref_decoded, ref_y_hat, _ = reference[name]
        # y_hat differs from float32's only by the LRP's rounding where the LRP runs in
        # reduced precision (0.5 * tanh(.): far below 0.5); a differently decoded symbol would
        # move y_hat by about 1. tests/test_bench.py checks the range decoder's outputs exactly.
        difference = float(np.abs(y_hat.numpy() - ref_y_hat.numpy()).max())
        if difference >= 0.25:
          raise RuntimeError(f"{subject.name}, {precision}, {name}: y_hat differs from the "
                             f"float32 decoder's by {difference}: decoded symbols differ")
        row["y_hat_max_abs_diff_vs_float32"] = difference
        row["y_hat_identical_to_float32"] = difference == 0
        row["psnr_vs_float32_db"] = psnr(ref_decoded, decoded)
        row["max_abs_diff_vs_float32"] = int(tf.reduce_max(tf.abs(
            tf.cast(decoded, tf.int32) - tf.cast(ref_decoded, tf.int32))))
      rows.append(row)
      progress.update(1)
  model.set_decode_precision("float32")
  return rows


def spread(values, prefix):
  values = np.asarray(values, np.float64)
  q1, median, q3 = np.percentile(values, [25, 50, 75])
  return {f"{prefix}_median": median, f"{prefix}_q1": q1, f"{prefix}_q3": q3,
          f"{prefix}_min": values.min(), f"{prefix}_max": values.max()}


def summarize(per_image, subjects, info):
  import pandas as pd
  from cbexp.evaluation.complexity import decode_kmac_per_pixel, encode_kmac_per_pixel
  frame = pd.DataFrame(per_image)
  summary = []
  charm = frame[(frame.entropy == "charm") & (frame.precision == "float32")].set_index("image")
  for subject in subjects:
    model = subject.model
    for precision, group in frame[frame.entropy == subject.name].groupby("precision",
                                                                         sort=False):
      group = group.set_index("image")
      row = {"entropy": subject.name, "precision": precision, "num_images": len(group),
             "trained_weights": subject.trained,
             "trainable_parameters": int(sum(np.prod(v.shape)
                                             for v in model.trainable_variables))}
      row.update(spread(group.encode_s, "encode_s"))
      row.update(spread(group.decode_s, "decode_s"))
      if "stage_sum_s" in group and group.stage_sum_s.notna().all():
        for stage in STAGES:
          row[f"stage_{stage}_s_median"] = group[f"stage_{stage}_s"].median()
        row.update(spread(group.stage_sum_s, "stage_sum_s"))
        row.update(spread(group.decode_over_stage_sum, "decode_over_stage_sum"))
      if len(charm) and set(group.index) <= set(charm.index):
        row.update(spread(charm.decode_s[group.index] / group.decode_s, "speedup_vs_charm"))
      if precision != "float32":
        reference = frame[(frame.entropy == subject.name) & (frame.precision == "float32")]
        reference = reference.set_index("image").decode_s[group.index]
        row.update(spread(reference / group.decode_s, "speedup_vs_float32"))
        row["psnr_vs_float32_db_min"] = group.psnr_vs_float32_db.min()
        row["psnr_change_db_mean"] = float(
            (group.psnr - frame[(frame.entropy == subject.name)
                                & (frame.precision == "float32")].set_index("image").psnr[
                                    group.index]).mean())
        row["y_hat_identical_to_float32"] = bool(group.y_hat_identical_to_float32.all())
        row["y_hat_max_abs_diff_vs_float32"] = group.y_hat_max_abs_diff_vs_float32.max()
        conv_speedup = info.get("bfloat16_conv_speedup")
        f32 = frame[(frame.entropy == subject.name) & (frame.precision == "float32")]
        if conv_speedup and "stage_synthesis_s" in f32 and f32.stage_synthesis_s.notna().all():
          # Amdahl: the float32 decode with its reduced-precision stages (the synthesis, and
          # the LRP where it is outside the entropy loop) made conv_speedup times faster.
          f32 = f32.set_index("image").loc[group.index]
          reduced = f32.stage_synthesis_s + (f32.stage_lrp_s if getattr(
              model.entropy_model, "lrp_outside_entropy_loop", False) else 0.)
          predicted = f32.decode_s / (f32.decode_s - reduced * (1 - 1 / conv_speedup))
          row["speedup_vs_float32_amdahl_median"] = float(predicted.median())
      row["bpp_mean"] = group.bpp.mean()
      row["psnr_mean"] = group.psnr.mean()
      h, w = int(group.height.iloc[0]), int(group.width.iloc[0])
      try:
        for stage, value in decode_kmac_per_pixel(model, h, w).items():
          row[f"decode_kmac_per_pixel_{stage}"] = value
        row["encode_kmac_per_pixel_total"] = encode_kmac_per_pixel(model, h, w)["total"]
      except ValueError:
        pass  # a model without a MAC count: left empty
      row.update(info)
      row["note"] = "" if subject.trained else UNTRAINED_NOTE
      summary.append(row)
  return frame, pd.DataFrame(summary)


def log_mlflow(uri, experiment, summary, per_image_path, summary_path):
  import mlflow
  mlflow.set_tracking_uri(uri)
  mlflow.set_experiment(experiment)
  for _, row in summary.iterrows():
    with mlflow.start_run(run_name=f"bench-{row.entropy}-{row.precision}"):
      mlflow.set_tags({"entropy": row.entropy, "precision": row.precision,
                       "tf_version": row.tf_version, "cpu": row.cpu, "kind": "bench"})
      metrics = {f"bench/{k}": float(v) for k, v in row.items()
                 if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                 and np.isfinite(v)}
      mlflow.log_metrics(metrics)
      mlflow.log_artifact(str(per_image_path))
      mlflow.log_artifact(str(summary_path))


def print_summary(summary):
  columns = ["entropy", "precision", "num_images", "trainable_parameters", "encode_s_median",
             "decode_s_median", "decode_s_q1", "decode_s_q3", "stage_sum_s_median",
             "decode_over_stage_sum_median", "speedup_vs_charm_median", "speedup_vs_charm_q1",
             "speedup_vs_charm_q3", "speedup_vs_float32_median",
             "speedup_vs_float32_amdahl_median", "psnr_change_db_mean",
             "psnr_vs_float32_db_min", "decode_kmac_per_pixel_total"]
  shown = summary[[c for c in columns if c in summary]]
  print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
  notes = set(summary.note) - {""}
  for note in notes:
    print(f"note: {note}")
  row = summary.iloc[0]
  print(f"machine: {row.cpu}, {row.cpus_available} CPUs, intra-op threads "
        f"{row.intra_op_threads} (0 = TF default), TF {row.tf_version}, oneDNN {row.onednn}, "
        f"1-min load average at start {row.load_average_1min:.2f}")
  if "bfloat16_conv_speedup" in row and np.isfinite(row.bfloat16_conv_speedup):
    print(f"bfloat16 on this CPU (AVX512-BF16 {row.cpu_avx512_bf16}, AMX {row.cpu_amx_bf16}): "
          f"the largest synthesis convolution alone runs {row.bfloat16_conv_speedup:.2f}x "
          f"faster than in float32; speedup_vs_float32_amdahl is the decode speed-up predicted "
          f"if every reduced-precision stage gained exactly that (Amdahl's law; the entropy "
          f"decoding stays float32)")


def main(argv=None):
  from cbexp.cli.common import HELP_FLAGS, config_groups_help, quiet_unless_debug
  from cbexp.images import DataError
  argv = sys.argv[1:] if argv is None else argv
  if any(a in HELP_FLAGS for a in argv):
    print(__doc__.strip() + "\n\n" + config_groups_help())
    return 0
  quiet_unless_debug()
  try:
    args, overrides = parse_args(argv)
    import tensorflow as tf
    from tqdm import tqdm
    tf.get_logger().setLevel("ERROR")  # retracing notices: one trace per orientation is wanted
    if args["threads"]:  # before the first op (decoding the images): fixed once TF has started
      tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
    images = load_images(args["images"], args["max_images"])
    info = machine_info()
    if set(args["precision"]) - {"float32"}:
      info["bfloat16_conv_speedup"] = bfloat16_conv_speedup()
    subjects = build_subjects(args, overrides)
    per_image = []
    total = len(subjects) * len(images) * len(args["precision"])
    with tqdm(total=total, desc="bench", file=sys.stderr) as progress:
      for subject in subjects:
        per_image += bench_model(subject, images, args["precision"], args["repeats"], progress)
    frame, summary = summarize(per_image, subjects, info)
    out = pathlib.Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    per_image_path = out.with_name(out.stem + "_per_image.csv")
    summary.to_csv(out, index=False)
    frame.to_csv(per_image_path, index=False)
    print_summary(summary)
    print(f"wrote {out} and {per_image_path}")
    if args["mlflow"]:
      log_mlflow(args["mlflow"], args["experiment"], summary, per_image_path, out)
  except (BenchError, DataError, FileNotFoundError) as e:
    print(f"cbexp.bench: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
