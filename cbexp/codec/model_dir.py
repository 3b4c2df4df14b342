"""A trained model as *config + weights*: ``config.yaml`` (the resolved config) and ``weights/``
(a TensorFlow checkpoint). Loading treats the folder as data: the config is read with a safe YAML
loader and checked against an allow-list (``cbexp.config.check_untrusted_config``) before anything
is built, and a checkpoint holds tensors, no code.
"""

import pathlib

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cbexp.config import ConfigError, build_model, check_untrusted_config
from cbexp.errors import LoadError

MAX_CONFIG_BYTES = 1 << 20  # a saved config is a few KB


class ModelDirError(LoadError):
  """A model directory that cannot be loaded; the message names it and the problem."""


def save_model_dir(model, cfg: DictConfig, directory):
  import tensorflow as tf

  directory = pathlib.Path(directory)
  (directory / "weights").mkdir(parents=True, exist_ok=True)
  OmegaConf.save(cfg, directory / "config.yaml", resolve=True)
  tf.train.Checkpoint(model=model).write(str(directory / "weights" / "model"))
  return directory


def load_model_dir(directory, build_coders=True, numerics=None, name=None):
  """-> (model, cfg). The range-coding tables are rebuilt from the restored weights.

  ``numerics`` ("float" or "exact", None: the config's): sets ``cfg.entropy.numerics`` before
  the model is built, e.g. to code with the exact entropy path of a model trained in float
  (``cbexp.entropy.exact``); it is part of the returned config, so of the fingerprint.
  ``name``: how errors name the directory (e.g. the ``runs:/`` URI it was downloaded from)."""
  import tensorflow as tf  # after the config is read: a refusal never loads TensorFlow

  directory = pathlib.Path(directory)
  where = name or str(directory)
  config_path = directory / "config.yaml"
  if not config_path.is_file():
    raise ModelDirError(f"{where}: not a cbexp model directory (no config.yaml)")
  cfg = load_config(config_path, f"{name}: config.yaml" if name else None)
  if numerics is not None:
    from cbexp.entropy.exact import NUMERICS

    if numerics not in NUMERICS:
      raise ModelDirError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    cfg.entropy.numerics = numerics
  model = build_model(cfg)
  prefix = directory / "weights" / "model"
  if not tf.io.gfile.exists(str(prefix) + ".index"):
    raise ModelDirError(f"{where}: no weights (expected weights/model.index)")
  try:
    restore_weights(model, str(prefix))
  except (tf.errors.OpError, ValueError) as error:  # TensorFlow's message names a local path
    raise ModelDirError(
      f"{where}: its weights cannot be read (weights/model.*: {error.__class__.__name__}); "
      "the checkpoint is damaged, incomplete or of another config"
    ) from None
  if build_coders:
    model.build_coders()
  return model, cfg


def restore_weights(model, prefix):
  """``model``'s variables from the checkpoint at ``prefix`` (``save_model_dir``'s), one at a time.
  TensorFlow's ``Checkpoint.read`` reads every tensor before it assigns any, so that a second
  copy of the weights is resident while a model loads (ChARM: 444 MB, the peak of a small
  image's compress) and stays in TensorFlow's buffer pool after. The objects are matched as
  ``read`` matches them, along the checkpoint's object graph by their names; a value whose object
  does not exist before ``build_coders`` (the coders' tables, rebuilt from the weights) is not
  read, as ``read(...).expect_partial()`` left it. Each value's shape and type are checked
  against its variable's from the checkpoint's index, before the value is read."""
  import tensorflow as tf
  from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

  reader = tf.train.load_checkpoint(prefix)
  shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
  try:
    graph = TrackableObjectGraph.FromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  except Exception as error:  # protobuf's DecodeError: a damaged object graph
    raise ValueError(f"object graph: {error.__class__.__name__}") from None
  pending, seen = [(0, tf.train.Checkpoint(model=model))], set()
  while pending:
    node_id, trackable = pending.pop()
    if node_id in seen:
      continue
    seen.add(node_id)
    node = graph.nodes[node_id]
    if isinstance(trackable, tf.Variable):
      for attribute in node.attributes:
        key = attribute.checkpoint_key
        if attribute.name != "VARIABLE_VALUE" or key not in shapes:
          continue
        if shapes[key] != trackable.shape.as_list() or dtypes[key] != trackable.dtype:
          raise ValueError(f"{key}: {shapes[key]} {dtypes[key].name}, not {trackable.shape}")
        trackable.assign(reader.get_tensor(key))
    children = tf.train.TrackableView.children(trackable)
    for child in node.children:
      if not 0 <= child.node_id < len(graph.nodes):
        raise ValueError(f"object graph: node {child.node_id} of {len(graph.nodes)}")
      if child.local_name in children:
        pending.append((child.node_id, children[child.local_name]))


def load_config(config_path, where=None):
  """A model directory's config.yaml -> DictConfig, validated as untrusted data before anything
  is built from it. Raises ModelDirError naming the file (or ``where``) and the offending key."""
  import yaml

  where = where or config_path
  size = config_path.stat().st_size
  if size > MAX_CONFIG_BYTES:
    raise ModelDirError(
      f"{where}: {size} bytes, more than a model config can need ({MAX_CONFIG_BYTES})"
    )
  text = config_path.read_text(encoding="utf-8", errors="replace")
  try:
    # YAML aliases could expand a small file into a huge config (a saved config has none).
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, yaml.SafeLoader)):
      raise ModelDirError(f"{where}: YAML aliases are not allowed in a model config")
    cfg = OmegaConf.create(text)
  except (yaml.YAMLError, OmegaConfBaseException) as error:
    first = (str(error).strip().splitlines() or ["invalid YAML"])[0]
    raise ModelDirError(f"{where}: not a valid YAML config ({first})") from None
  if not isinstance(cfg, DictConfig):
    raise ModelDirError(f"{where}: expected a mapping at the top level")
  try:
    check_untrusted_config(OmegaConf.to_container(cfg, resolve=False))
  except ConfigError as error:
    raise ModelDirError(f"{where}: {error}") from None
  return cfg
