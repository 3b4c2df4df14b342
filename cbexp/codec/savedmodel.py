"""Exporting a model as a self-contained TensorFlow SavedModel, and loading one back.

    python -m cbexp.export out=exports/charm_untrained entropy=charm          # untrained, any overrides
    python -m cbexp.export out=exports/charm --from outputs/runs/.../model    # a model directory
    python -m cbexp.export out=exports/charm --from runs:/<mlflow run id>      # a run's `model` artifact

The SavedModel holds the model's weights, the range-coding tables (tfc entropy models built with
``compression=True`` keep them in variables) and two functions:

* ``compress(image: uint8 [H, W, 3]) -> {"strings": string [num_strings] (z first),
  "checks": uint8 [num_strings, 4]}``
* ``decompress(strings, image_shape: int32 [2]) -> {"image": uint8 [H, W, 3],
  "checks": uint8 [num_strings, 4]}``

``checks`` are the symbol checks of the strings (``cbexp.bitstream``, .cbx format 2): what the
encoder coded, and what the decoder decoded; the caller compares them (``cbexp.codec``) and
refuses an image whose checks differ. Exports of format 2 (before the checks: ``compress`` gave
the strings, ``decompress`` the image) still load: they decode .cbx files of format 1, and
``cbexp.codec`` refuses, in one line asking for a new export, to encode with them or to decode a
file that carries checks.

plus ``encoder_reconstruction(image)`` (what a float32 decoder will produce, computed by the
encoder) and metadata variables: ``entropy_model``, ``fingerprint``, ``num_strings``,
``pad_multiple``, ``config_json``, ``decode_precision``, ``format_version``. A fresh process needs only ``import tensorflow_compression``
(it registers the range-coding ops) and ``tf.saved_model.load``; no config, no cbexp code.

The *fingerprint* identifies config + weights + range-coding tables: SHA-256 over the model
config (canonical JSON), the value of every weight and of every range-coding table (CDFs and
offsets), truncated to 128 bits. A ``.cbx`` file records it, and decoding with any other model
(other entropy model, other weights, other tables) is refused instead of producing a wrong
image. Loading recomputes it from the stored variables, so a damaged or altered export is caught
too. (The tables are derived from the weights; a model directory rebuilds them, so its
fingerprint equals its export's on the same machine, and differs where the tables would.)

An export is code, not data: a SavedModel may contain any TensorFlow op (file reads and writes
included). Load only exports you trust; a model directory (config + weights) is data.
"""
import argparse
import hashlib
import json
import os
import pathlib

import numpy as np

from cbexp.tracking import runs as tracking
from cbexp.config import MODEL_KEYS  # the config keys that define the network

# Bumped if the functions' contract changes; loaders refuse exports they do not understand.
# 2: the fingerprint covers the range-coding tables; decompress verifies its strings.
# 3: compress and decompress also return the strings' symbol checks (.cbx format 2).
EXPORT_FORMAT_VERSION = 3
# Formats ``load`` accepts: 2 decodes .cbx files of format 1 only (cbexp.codec).
READ_EXPORT_FORMATS = (2, 3)
FINGERPRINT_HEX_CHARS = 32  # 128 bits


class ExportError(ValueError):
  """A model source or export that cannot be used; the message says which and why."""


def config_json(cfg):
  """The model part of a config as canonical JSON (sorted keys, resolved interpolations)."""
  from omegaconf import OmegaConf
  missing = [k for k in MODEL_KEYS if k not in cfg]
  if missing:
    raise ExportError(f"config lacks the model keys {missing}")
  model_cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, list(MODEL_KEYS)), resolve=True)
  return json.dumps(model_cfg, sort_keys=True, separators=(",", ":"))


def fingerprint(config_text, variables):
  """128-bit hex digest of the config text and every variable's shape, dtype and value, in
  order (``weights + tables``, see ``split_variables``)."""
  from cbexp.entropy.exact import EXACT_SCHEME
  digest = hashlib.sha256()
  digest.update(config_text.encode("utf-8"))
  if '"numerics":"exact"' in config_text:
    # The same weights code other means and scale indexes under another integer scheme: its
    # files are another model's (refused by the fingerprint check, not decoded wrong).
    digest.update(f"|exact scheme {EXACT_SCHEME}|".encode("ascii"))
  for weight in variables:
    value = np.ascontiguousarray(weight.numpy())
    digest.update(f"|{value.dtype.str}{value.shape}|".encode("ascii"))
    digest.update(value.tobytes())
  return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]


def split_variables(model):
  """(weights, range-coding tables) of a model whose coders are built, each in
  ``model.variables`` order. The tables are every tfc coder's ``cdf`` and ``cdf_offset``."""
  model.z_coder  # raises the explanatory error if the tables are missing
  is_table = [v.name.rsplit("/", 1)[-1].startswith("cdf") for v in model.variables]
  weights = [v for v, table in zip(model.variables, is_table) if not table]
  tables = [v for v, table in zip(model.variables, is_table) if table]
  return weights, tables


def _string_variable(value):
  import tensorflow as tf
  return tf.Variable(value, dtype=tf.string, trainable=False)


def codec_module(model, cfg):
  """A tf.Module with the codec functions and metadata of ``model`` (coders built).

  The functions are closures over the Keras model, which is deliberately not an attribute:
  SavedModel then stores only what decoding needs (the variables the functions capture, listed
  in ``weights`` and ``tables``), not Keras's layer-by-layer serialization.
  """
  import tensorflow as tf
  from cbexp.models.compression import PAD_MULTIPLE, pad_replicate

  weights, tables = split_variables(model)
  text = config_json(cfg)
  num_strings = 1 + model.entropy_model.num_strings

  def padded(image):
    size = tf.shape(image)[:2]
    padded_size = (size + PAD_MULTIPLE - 1) // PAD_MULTIPLE * PAD_MULTIPLE
    return pad_replicate(tf.cast(image[None], tf.float32), padded_size[0], padded_size[1])

  def to_image(x_hat, image_shape):
    return tf.saturate_cast(tf.round(x_hat[0, :image_shape[0], :image_shape[1], :]), tf.uint8)

  image_spec = tf.TensorSpec([None, None, 3], tf.uint8, name="image")

  @tf.function(input_signature=[image_spec])
  def compress(image):
    strings, _, checks = model._compress_padded(padded(image))
    return {"strings": strings, "checks": checks}

  @tf.function(input_signature=[tf.TensorSpec([num_strings], tf.string, name="strings"),
                                tf.TensorSpec([2], tf.int32, name="image_shape")])
  def decompress(strings, image_shape):
    padded_shape = (image_shape + PAD_MULTIPLE - 1) // PAD_MULTIPLE * PAD_MULTIPLE
    x_hat, _, checks = model._decompress_padded(strings, padded_shape)
    return {"image": to_image(x_hat, image_shape), "checks": checks}

  @tf.function(input_signature=[image_spec])
  def encoder_reconstruction(image):
    _, y_hat, _ = model._compress_padded(padded(image))
    return to_image(model.synthesis(y_hat), tf.shape(image)[:2])

  module = tf.Module(name="cbexp_codec")
  module.weights = weights
  module.tables = tables
  module.compress = compress
  module.decompress = decompress
  module.encoder_reconstruction = encoder_reconstruction
  module.format_version = tf.Variable(EXPORT_FORMAT_VERSION, trainable=False)
  module.entropy_model = _string_variable(str(cfg.entropy.name))
  module.fingerprint = _string_variable(fingerprint(text, weights + tables))
  module.num_strings = tf.Variable(num_strings, trainable=False)
  module.pad_multiple = tf.Variable(PAD_MULTIPLE, trainable=False)
  module.config_json = _string_variable(text)
  # "float32" (the reference) unless a faster, slightly different synthesis was chosen for
  # decoding (cbexp.precision); the strings are the same either way.
  module.decode_precision = _string_variable(getattr(model, "decode_precision", "float32"))
  module.tf_version = _string_variable(tf.__version__)
  return module


def save(model, cfg, out, module=None):
  """Writes the SavedModel to ``out`` (a new or empty folder), atomically: it is written beside
  ``out`` and renamed, so an interrupted export leaves no half-written model. ``module``: a
  ``codec_module(model, cfg)`` already built (tracing its functions again costs seconds)."""
  import tempfile
  import tensorflow as tf
  out = pathlib.Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ExportError(f"{out}: already exists and is not an empty folder; choose a new one")
  out.parent.mkdir(parents=True, exist_ok=True)
  module = module or codec_module(model, cfg)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  umask = os.umask(0)
  os.umask(umask)
  staging.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only
  try:
    # No gradients: an export codes images, it is not trained (and saving is faster).
    tf.saved_model.save(module, str(staging), options=tf.saved_model.SaveOptions(
        experimental_custom_gradients=False))
    if out.exists():
      out.rmdir()
    os.replace(staging, out)
  finally:
    if staging.exists():
      import shutil
      shutil.rmtree(staging, ignore_errors=True)
  return module


def is_saved_model(path):
  return (pathlib.Path(path) / "saved_model.pb").is_file()


# Ops that reach outside the process (files, printing to files, Python callbacks, input
# readers, summary writers): refused anywhere in an export's graph, since tf.saved_model.load
# runs its restore function and the codec runs its compress/decompress functions.
OUTSIDE_OPS = frozenset("""
    ReadFile WriteFile MatchingFiles ImmutableConst InitializeTableFromTextFile
    InitializeTableFromTextFileV2 PrintV2 PyFunc PyFuncStateless EagerPyFunc TFRecordDataset
    TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset FixedLengthRecordDatasetV2
    MatchingFilesDataset SaveDataset SaveDatasetV2 LoadDataset SnapshotDataset SnapshotDatasetV2
    CacheDataset CacheDatasetV2 DatasetToTFRecord ExperimentalDatasetToTFRecord
    CreateSummaryFileWriter SummaryWriter WriteSummary WriteScalarSummary WriteImageSummary
    WriteAudioSummary WriteHistogramSummary WriteGraphSummary WriteRawProtoSummary
    FlushSummaryWriter ImportEvent DebugIdentity DebugIdentityV2 DebugIdentityV3
    DebugNumericSummary DebugNumericSummaryV2 RecordInput WholeFileReader WholeFileReaderV2
    TFRecordReader TFRecordReaderV2 TextLineReader TextLineReaderV2 FixedLengthRecordReader
    FixedLengthRecordReaderV2""".split())
# Checkpoint ops: TensorFlow's own save and restore functions use them on the export's variables
# file; in a function that Python can call (compress, decompress, ...) they would read or write
# any path.
CHECKPOINT_OPS = frozenset("Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice "
                           "MergeV2Checkpoints".split())


def check_graph_ops(path):
  """Refuses, before TensorFlow loads anything, an export whose graph holds ops that touch files
  or call out of the graph (OUTSIDE_OPS anywhere; CHECKPOINT_OPS in the functions an export
  exposes). A guard against the obvious, not a sandbox: an export is code, load only exports you
  trust."""
  from tensorflow.core.protobuf import saved_model_pb2
  saved = saved_model_pb2.SavedModel()
  try:
    saved.ParseFromString((pathlib.Path(path) / "saved_model.pb").read_bytes())
  except Exception as error:  # protobuf's DecodeError, OSError
    raise ExportError(f"{path}: unreadable saved_model.pb ({error.__class__.__name__})") from None
  for meta_graph in saved.meta_graphs:
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}

    def called(nodes):
      names = set()
      for node in nodes:
        if node.op in library:
          names.add(node.op)
        for value in node.attr.values():
          if value.HasField("func"):
            names.add(value.func.name)
          names.update(f.name for f in value.list.func)
      return names

    exposed, stack = set(), []
    for node in meta_graph.object_graph_def.nodes:
      kind = node.WhichOneof("kind")
      if kind == "function":
        stack += node.function.concrete_functions
      elif kind == "bare_concrete_function":
        stack.append(node.bare_concrete_function.concrete_function_name)
    while stack:
      name = stack.pop()
      if name in library and name not in exposed:
        exposed.add(name)
        stack += called(library[name].node_def)
    # Sorted by name: the library's order depends on how many functions the saving process had
    # traced before, and the first refusal named should not.
    places = [("the graph", meta_graph.graph_def.node, False)] + [
        (f"function {name}", library[name].node_def, name in exposed)
        for name in sorted(library)]
    for where, nodes, is_exposed in places:
      for node in nodes:
        if node.op in OUTSIDE_OPS or (is_exposed and node.op in CHECKPOINT_OPS):
          raise ExportError(f"{path}: refused: {where} holds the op {node.op}, which reaches "
                            f"outside the model (files or Python); an export is code, load only "
                            f"exports you trust")


def load(path, verify=True):
  """Loads an export (no config or cbexp model code needed). ``verify`` recomputes the
  fingerprint from the stored weights and refuses a mismatch."""
  import tensorflow as tf
  import tensorflow_compression  # noqa: F401  (registers the range-coding ops)
  path = pathlib.Path(path)
  if not is_saved_model(path):
    raise ExportError(f"{path}: not a cbexp export (no saved_model.pb)")
  check_graph_ops(path)
  try:
    module = tf.saved_model.load(str(path))
  except (tf.errors.OpError, ValueError, OSError) as error:
    first = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
    raise ExportError(f"{path}: cannot load the SavedModel ({first})") from None
  for name in ("format_version", "fingerprint", "weights", "tables", "compress", "decompress"):
    if not hasattr(module, name):
      raise ExportError(f"{path}: a SavedModel but not a cbexp export (no '{name}')")
  version = int(module.format_version.numpy())
  if version not in READ_EXPORT_FORMATS:
    readable = " and ".join(map(str, READ_EXPORT_FORMATS))
    raise ExportError(f"{path}: export format {version}, this code reads formats {readable}; "
                      "export the model again (python -m cbexp.export --from MODEL)")
  if verify:
    verify_fingerprint(module, path)
  return module


def verify_fingerprint(module, where="export"):
  """Recomputes the fingerprint from the module's config, weights and range-coding tables;
  raises if it differs."""
  stored = module.fingerprint.numpy().decode()
  actual = fingerprint(module.config_json.numpy().decode(),
                       list(module.weights) + list(module.tables))
  if stored != actual:
    raise ExportError(f"{where}: the weights or range-coding tables do not match the stored "
                      f"fingerprint (computed {actual}, stored {stored}): the export is damaged "
                      "or was altered")


# --- model sources ---------------------------------------------------------------------------
def download_run_model(uri, tracking_uri=None, dst=None):
  """``runs:/<run id>`` (the run's ``model``), ``runs:/<run id>/<path>`` or
  ``models:/<name>/<version>`` (the Model Registry) -> local model directory."""
  import mlflow
  from mlflow.exceptions import MlflowException

  from cbexp.tracking.pyfunc import model_dir_in
  tracking_uri = tracking_uri or tracking.default_uri()
  if tracking_uri.startswith("sqlite:///"):
    db = pathlib.Path(tracking_uri[len("sqlite:///"):])
    if not db.is_file():
      raise ExportError(f"{uri}: no MLflow tracking store at {db} "
                        "(set MLFLOW_TRACKING_URI or pass --tracking-uri)")
  if uri.startswith("runs:/"):
    rest = uri[len("runs:/"):].strip("/")
    if not rest:
      raise ExportError(f"{uri}: no run id (expected runs:/<run id>)")
    if "/" not in rest:
      uri = f"runs:/{rest}/model"
  try:
    with tracking.fluent_store(tracking_uri):  # models:/ and logged models resolve through it
      local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst,
                                                  tracking_uri=tracking_uri)
  except MlflowException as error:
    raise ExportError(f"{uri}: {str(error).strip().splitlines()[0]}") from None
  return model_dir_in(local)


def load_trained(source, tracking_uri=None, numerics=None):
  """A model directory or ``runs:/<id>`` -> (model with coders built, cfg). ``numerics``: the
  entropy numerics to code with (``cbexp.entropy.exact``; None: the model's own)."""
  import tempfile
  from cbexp.codec.model_dir import ModelDirError, load_model_dir
  source = str(source)
  try:
    if source.startswith(("runs:/", "models:/")):
      with tempfile.TemporaryDirectory(prefix="cbexp_model_") as tmp:
        return load_model_dir(download_run_model(source, tracking_uri, dst=tmp),
                              numerics=numerics)
    if not pathlib.Path(source).exists():
      raise ExportError(f"{source}: no such model directory")
    return load_model_dir(source, numerics=numerics)
  except ModelDirError as error:
    raise ExportError(str(error)) from None


def build_untrained(overrides, seed=None):
  import tensorflow as tf
  from cbexp.config import build_model, compose
  if seed is not None:
    tf.random.set_seed(seed)
  cfg = compose(list(overrides))
  model = build_model(cfg)
  model.build_coders()
  return model, cfg


# --- command line ----------------------------------------------------------------------------
def _raise_config_error(error):
  """Hydra/OmegaConf errors as one line (their message spans lines), naming the known entropy
  models when the name is unknown."""
  from hydra.errors import HydraException
  from omegaconf.errors import OmegaConfBaseException
  if not isinstance(error, (HydraException, OmegaConfBaseException)):
    raise error
  text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  if "entropy/" in text and "Could not" in text:
    from cbexp.config import CONF_DIR
    names = sorted(p.stem for p in (CONF_DIR / "entropy").glob("*.yaml"))
    text += f" (known entropy models: {', '.join(names)})"
  raise ExportError(f"config: {text}") from None


def main(argv=None):
  from cbexp.cli.common import one_line_parser, run_argparse_cli
  parser = one_line_parser(
      prog="python -m cbexp.export",
      description="Export a model (untrained from config overrides, or trained with --from) "
                  "as a self-contained SavedModel.",
      epilog="examples:\n"
             "  python -m cbexp.export out=exports/cb_tiny entropy=checkerboard transform=tiny\n"
             "  python -m cbexp.export out=exports/charm --from outputs/runs/<run>/model\n"
             "An export is code (a SavedModel can hold any TensorFlow op): share model "
             "directories, load only exports you trust.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("args", nargs="*", metavar="out=DIR | OVERRIDE",
                      help="out=<folder> (required) and, without --from, Hydra overrides such "
                           "as entropy=checkerboard transform=tiny")
  parser.add_argument("--from", dest="source", metavar="MODEL",
                      help="a trained model: a model directory, runs:/<mlflow run id> or "
                           "models:/<registered name>/<version>")
  parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ "
                      "(default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
  parser.add_argument("--seed", type=int, help="random seed for an untrained model's weights")
  parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                      help="decoding precision baked into the export (cbexp.precision): "
                           "bfloat16 runs the synthesis, and the LRP where safe, in bfloat16; "
                           "the streams are the same")
  parser.add_argument("--numerics", choices=("float", "exact"),
                      help="entropy-parameter numerics (cbexp.entropy.exact): exact computes "
                           "means and scale indexes in integer arithmetic, the same bits on "
                           "every machine (default: the model's own, float)")

  def body(args):
    outs = [a for a in args.args if a.startswith("out=")]
    overrides = [a for a in args.args if not a.startswith("out=")]
    if len(outs) != 1 or not outs[0][len("out="):]:
      raise ExportError("give the output folder exactly once: out=<folder>")
    out = pathlib.Path(outs[0][len("out="):])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
      raise ExportError(f"{out}: already exists and is not an empty folder; choose a new one")
    if args.source and overrides:
      raise ExportError(f"overrides {overrides} cannot change a trained model (--from); "
                        "export it as it is")
    if args.source:
      model, cfg = load_trained(args.source, args.tracking_uri, args.numerics)
    else:
      if args.numerics:
        overrides.append(f"entropy.numerics={args.numerics}")
      try:
        model, cfg = build_untrained(overrides, args.seed)
      except Exception as error:
        _raise_config_error(error)
    model.set_decode_precision(args.precision)
    module = save(model, cfg, out)
    print(f"exported {cfg.entropy.name} model (fingerprint {module.fingerprint.numpy().decode()},"
          f" {'trained, from ' + args.source if args.source else 'untrained'}) to {out}")

  return run_argparse_cli(parser, body, argv, intermixed=True)


if __name__ == "__main__":
  raise SystemExit(main())
