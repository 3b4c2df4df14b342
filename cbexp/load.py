"""One loader for every model reference: an export folder, a model directory, ``runs:/<run id>``
or ``models:/<name>/<version>`` -> a trained model (``load_model``) or a ``Codec``
(``load_codec``). A reference that cannot be used raises ``LoadError``, naming it as typed.
``ModelRef.parse`` checks a reference without loading TensorFlow, so commands fail fast."""

import contextlib
import dataclasses
import json
import pathlib
import tempfile

from cbexp.codec.codec import DEFAULT_MAX_PIXELS, Codec
from cbexp.errors import LoadError

__all__ = ["LoadError", "ModelRef", "build_untrained", "load_codec", "load_model"]

KINDS = (
  "an export folder (saved_model.pb)",
  "a model directory (config.yaml + weights/)",
  "runs:/<run id>[/<path>]",
  "models:/<name>/<version or alias>",
)
EXPECTED = f"expected {', '.join(KINDS[:-1])} or {KINDS[-1]}"


@dataclasses.dataclass(frozen=True)
class ModelRef:
  """A model reference as the user typed it (``text``) and its ``kind``: "export",
  "model_dir", "run" or "registered"."""

  text: str
  kind: str

  def __str__(self):
    return self.text

  @property
  def path(self):
    return pathlib.Path(self.text)

  @property
  def tracked(self):
    """Whether the model is in an MLflow store (downloaded before it is loaded)."""
    return self.kind in ("run", "registered")

  @classmethod
  def parse(cls, text):
    """-> ModelRef, or LoadError naming the reference and the four kinds it can be."""
    if isinstance(text, ModelRef):
      return text
    text = str(text)
    for scheme, kind in (("runs:/", "run"), ("models:/", "registered")):
      if text.startswith(scheme):
        if not text[len(scheme) :].strip("/"):
          raise LoadError(f"{text}: nothing after {scheme} ({EXPECTED})")
        return cls(text, kind)
    path = pathlib.Path(text)
    if not path.exists():
      raise LoadError(f"{text}: no such model ({EXPECTED})")
    if path.is_dir() and (path / "saved_model.pb").is_file():
      return cls(text, "export")
    if path.is_dir() and (path / "config.yaml").is_file():
      return cls(text, "model_dir")
    raise LoadError(f"{text}: not a model ({EXPECTED})")


def load_model(ref, numerics=None, tracking_uri=None):
  """A model directory, ``runs:/`` or ``models:/`` -> (CompressionModel with its range-coding
  tables built, cfg). ``numerics`` ("float" or "exact"; None: the model's own) is set in the
  config before the model is built (``cbexp.entropy.exact``)."""
  ref = ModelRef.parse(ref)
  from cbexp.codec.model_dir import load_model_dir

  if ref.kind == "export":
    raise LoadError(
      f"{ref}: an export holds the codec's functions, not the model; use its "
      "model directory (config.yaml + weights/)"
    )
  with _local_model_dir(ref, tracking_uri) as directory:
    return load_model_dir(directory, numerics=numerics, name=ref.text if ref.tracked else None)


def build_untrained(overrides=(), seed=None):
  """An untrained model from Hydra overrides of the model config (e.g. ``["entropy=charm"]``)
  -> (model with its range-coding tables built, cfg). ``seed``: TensorFlow's random seed for
  the weights (None: unseeded)."""
  import tensorflow as tf

  from cbexp.config import build_model, compose

  if seed is not None:
    tf.keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow: Keras draws from all
  cfg = compose(list(overrides))
  model = build_model(cfg)
  model.build_coders()
  return model, cfg


def load_codec(
  ref,
  precision=None,
  numerics=None,
  tracking_uri=None,
  max_pixels=DEFAULT_MAX_PIXELS,
  memory_budget_mb=None,
):
  """Any model reference -> ``Codec``. ``precision``: the decoding precision
  (``cbexp.models.precision``; None: an export's own, float32 otherwise); ``memory_budget_mb``:
  the tiles' memory budget (``cbexp.models.tiling``; None: an export's own, the default
  otherwise; 0: untiled). An export's precision, numerics and tiles are fixed when it is
  exported, so asking for others is refused."""
  ref = ModelRef.parse(ref)
  from cbexp.codec import savedmodel
  from cbexp.models.precision import check_precision

  if precision is not None:
    check_precision(precision)
  if ref.kind == "export":
    module = savedmodel.load(ref.path)
    _check_export_settings(ref, module, precision, numerics, memory_budget_mb)
    return Codec(module, ref.text, max_pixels)
  model, cfg = load_model(ref, numerics, tracking_uri)
  if memory_budget_mb is not None:
    model.set_memory_budget(memory_budget_mb)
  model.set_decode_precision(precision or "float32")
  return Codec.from_model(model, cfg, ref.text, max_pixels)


def _check_export_settings(ref, module, precision, numerics, memory_budget_mb=None):
  if memory_budget_mb is not None:
    # Exports older than tiling have no budget: their graphs are untiled (0).
    budget = getattr(module, "memory_budget_mb", None)
    exported = float(budget.numpy()) if budget is not None else 0.0
    if float(memory_budget_mb) != exported:
      raise LoadError(
        f"{ref}: this export's tiles were chosen for a memory budget of {exported:g} MB; "
        f"--memory-budget {memory_budget_mb:g} needs a new export (cbexp export "
        f"--memory-budget {memory_budget_mb:g}) or the model directory"
      )
  exported = module.decode_precision.numpy().decode()
  if precision is not None and precision != exported:
    raise LoadError(
      f"{ref}: this export decodes in {exported}; --precision {precision} needs a "
      f"new export (cbexp export --precision {precision}) or the model directory"
    )
  if numerics is not None:
    config = json.loads(module.config_json.numpy())
    exported = config.get("entropy", {}).get("numerics", "float")
    if numerics != exported:
      raise LoadError(
        f"{ref}: this export codes with {exported} numerics; --numerics "
        f"{numerics} needs a new export (cbexp export --numerics {numerics}) or "
        "the model directory"
      )


@contextlib.contextmanager
def _local_model_dir(ref, tracking_uri):
  """The model directory of ``ref`` on this machine: its own folder, or a download of the
  tracked model into a temporary folder that is removed afterwards. A tracked model is checked
  before it is downloaded (``cbexp.tracking.artifacts.model_dir_uri``) and its config before its
  weights, with nothing but the Python config loader: a hostile config is refused before
  TensorFlow loads."""
  if not ref.tracked:
    yield ref.path
    return
  from mlflow.exceptions import MlflowException

  from cbexp.codec.model_dir import load_config
  from cbexp.tracking import artifacts
  from cbexp.tracking.store import resolve_uri

  tracking_uri = resolve_uri(tracking_uri)
  missing = artifacts.missing_store(tracking_uri)
  if missing:
    raise LoadError(
      f"{ref}: no MLflow tracking store at {missing} (set MLFLOW_TRACKING_URI "
      "or pass --tracking-uri)"
    )
  with tempfile.TemporaryDirectory(prefix="cbexp_model_") as tmp:
    try:
      source = artifacts.model_dir_uri(ref.text, tracking_uri)
      config = artifacts.download(f"{source}/config.yaml", tracking_uri, pathlib.Path(tmp, "c"))
      load_config(config, f"{ref}: config.yaml")
      directory = artifacts.download(source, tracking_uri, pathlib.Path(tmp, "m"))
    except MlflowException as error:
      raise LoadError(f"{ref}: {_first_line(error)}") from None
    yield directory


def _first_line(error):
  lines = str(error).strip().splitlines()
  return lines[0].strip() if lines else error.__class__.__name__
