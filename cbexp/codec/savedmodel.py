"""An export: a model as a self-contained TensorFlow SavedModel (weights, range-coding tables and
the codec functions ``compress``, ``decompress``, ``encoder_reconstruction``), with a fingerprint
of config + weights + tables that every ``.cbx`` file records. Loading needs only TensorFlow and
tensorflow-compression. An export is code (any TensorFlow op): load only exports you trust.
"""

import hashlib
import json
import os
import pathlib

import numpy as np

from cbexp.config import model_config
from cbexp.errors import LoadError

# Bumped if the functions' contract changes; loaders refuse exports they do not understand.
# 2: the fingerprint covers the range-coding tables; decompress verifies its strings.
# 3: compress and decompress also return the strings' symbol checks (.cbx format 2).
# 4: the checks of .cbx format 3; coding streamed within the memory budget.
EXPORT_FORMAT_VERSION = 4
# Formats ``load`` accepts: 2 decodes .cbx files of format 1 only, 3 files of formats 1 and 2,
# 4 files of formats 1 and 3 (cbexp.codec).
READ_EXPORT_FORMATS = (2, 3, 4)
FINGERPRINT_HEX_CHARS = 32  # 128 bits


class ExportError(LoadError):
  """An export that cannot be written or used; the message says which and why."""


def config_json(cfg):
  """The model part of a config (``cbexp.config.model_config``) as canonical JSON: sorted keys,
  resolved interpolations."""
  return json.dumps(model_config(cfg), sort_keys=True, separators=(",", ":"))


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
  model.require_coders()
  is_table = [v.name.rsplit("/", 1)[-1].startswith("cdf") for v in model.variables]
  weights = [v for v, table in zip(model.variables, is_table) if not table]
  tables = [v for v, table in zip(model.variables, is_table) if table]
  return weights, tables


def _string_variable(value):
  import tensorflow as tf

  return tf.Variable(value, dtype=tf.string, trainable=False)


def build_codec_functions(model, cfg):
  """A tf.Module with the codec functions and metadata of ``model`` (coders built).

  The functions are closures over the Keras model, which is deliberately not an attribute:
  SavedModel then stores only what decoding needs (the variables the functions capture, listed
  in ``weights`` and ``tables``), not Keras's layer-by-layer serialization.
  """
  import tensorflow as tf

  from cbexp.constants import PAD_MULTIPLE
  from cbexp.models.compression import crop, pad_to_multiple, padded_shape

  weights, tables = split_variables(model)
  text = config_json(cfg)
  num_strings = 1 + model.entropy_model.num_strings
  image_spec = tf.TensorSpec([None, None, 3], tf.uint8, name="image")

  @tf.function(input_signature=[image_spec])
  def compress(image):
    strings, _, checks = model.compress_padded(pad_to_multiple(image, tf.uint8), False)
    return {"strings": strings, "checks": checks}

  @tf.function(
    input_signature=[
      tf.TensorSpec([num_strings], tf.string, name="strings"),
      tf.TensorSpec([2], tf.int32, name="image_shape"),
    ]
  )
  def decompress(strings, image_shape):
    x_hat, _, checks = model.decompress_padded(strings, padded_shape(image_shape), False)
    return {"image": crop(x_hat, image_shape), "checks": checks}

  @tf.function(input_signature=[image_spec])
  def encoder_reconstruction(image):
    _, y_hat, _ = model.compress_padded(pad_to_multiple(image))
    return crop(model.synthesis(y_hat), tf.shape(image)[:2])

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
  # The memory budget its tiles were chosen for (cbexp.models.tiling): fixed in the graphs.
  module.memory_budget_mb = tf.Variable(float(model.memory_budget_mb), trainable=False)
  module.tf_version = _string_variable(tf.__version__)
  return module


def check_new_folder(out):
  """Refuses an output folder that exists and is not empty (an export is never overwritten)."""
  out = pathlib.Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ExportError(f"{out}: already exists and is not an empty folder; choose a new one")
  return out


def save(model, cfg, out, module=None):
  """Writes the SavedModel to ``out`` (a new or empty folder), atomically: it is written beside
  ``out`` and renamed, so an interrupted export leaves no half-written model. ``module``: a
  ``build_codec_functions(model, cfg)`` already built (tracing its functions again costs
  seconds)."""
  import tempfile

  import tensorflow as tf

  out = check_new_folder(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  module = module or build_codec_functions(model, cfg)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  umask = os.umask(0)
  os.umask(umask)
  staging.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only
  try:
    # No gradients: an export codes images, it is not trained (and saving is faster).
    tf.saved_model.save(
      module, str(staging), options=tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    )
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
OUTSIDE_OPS = frozenset(
  """
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
    FixedLengthRecordReaderV2""".split()
)
# Checkpoint ops: TensorFlow's own save and restore functions use them on the export's variables
# file; in a function that Python can call (compress, decompress, ...) they would read or write
# any path.
CHECKPOINT_OPS = frozenset(
  "Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice MergeV2Checkpoints".split()
)


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
      (f"function {name}", library[name].node_def, name in exposed) for name in sorted(library)
    ]
    for where, nodes, is_exposed in places:
      for node in nodes:
        if node.op in OUTSIDE_OPS or (is_exposed and node.op in CHECKPOINT_OPS):
          raise ExportError(
            f"{path}: refused: {where} holds the op {node.op}, which reaches "
            f"outside the model (files or Python); an export is code, load only "
            f"exports you trust"
          )


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
    raise ExportError(
      f"{path}: export format {version}, this code reads formats {readable}; "
      "export the model again (cbexp export --from MODEL --out DIR)"
    )
  if verify:
    verify_fingerprint(module, path)
  return module


def verify_fingerprint(module, where="export"):
  """Recomputes the fingerprint from the module's config, weights and range-coding tables;
  raises if it differs."""
  stored = module.fingerprint.numpy().decode()
  actual = fingerprint(
    module.config_json.numpy().decode(), list(module.weights) + list(module.tables)
  )
  if stored != actual:
    raise ExportError(
      f"{where}: the weights or range-coding tables do not match the stored "
      f"fingerprint (computed {actual}, stored {stored}): the export is damaged "
      "or was altered"
    )
