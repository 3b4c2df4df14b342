"""A run's model as an MLflow model (pyfunc flavour): ``mlflow.pyfunc.load_model("runs:/<run
id>/model")`` gives ``predict(uint8 [H, W, 3]) -> {"reconstruction", "bpp"}`` through real
``.cbx`` bytes. It holds the model directory (what ``cbexp.load`` reads for ``runs:/`` and
``models:/``) and the export that ``predict`` runs (code: load only from stores you trust).
"""

import contextlib
import logging
import os
import unittest.mock
import warnings

import mlflow
import numpy as np

from cbexp.codec import savedmodel
from cbexp.codec.bitstream import Bitstream, bits_per_pixel
from cbexp.codec.codec import Codec
from cbexp.load import load_codec
from cbexp.tracking.artifacts import ARTIFACT_PATH, EXPORT, MODEL_DIR
from cbexp.tracking.store import fluent_store

# MLflow warns, when the class is defined, that predict has no type hints: its signature is
# given explicitly (signature()), for a tensor MLflow's type hints do not describe. MLflow's own
# decorator resets the warning filters there, so the warning is dropped where it is shown;
# catch_warnings restores showwarning after the class.
with warnings.catch_warnings():
  warnings.showwarning = lambda *args, **kwargs: None

  class CodecModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a cbexp export: a uint8 image in, its reconstruction and bpp out."""

    def load_context(self, context):
      module = savedmodel.load(context.artifacts[EXPORT])
      if int(module.format_version.numpy()) < savedmodel.EXPORT_FORMAT_VERSION:
        # An export from before the symbol checks (export format 2) cannot write .cbx format 2:
        # the model directory beside it gives the current functions (seconds of tracing).
        self.codec = load_codec(
          context.artifacts[MODEL_DIR], precision=module.decode_precision.numpy().decode()
        )
      else:
        self.codec = Codec(module, "MLflow model")

    def predict(self, context, model_input, params=None):
      image = np.asarray(model_input, dtype=np.uint8)
      data = self.codec.encode(image).to_bytes()
      reconstruction = self.codec.decode(Bitstream.from_bytes(data))
      return {
        "reconstruction": reconstruction,
        "bpp": np.array([bits_per_pixel(len(data), image.shape[0], image.shape[1])]),
      }


def signature():
  from mlflow.models import ModelSignature
  from mlflow.types.schema import Schema, TensorSpec

  return ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
    outputs=Schema(
      [
        TensorSpec(np.dtype(np.uint8), (-1, -1, 3), "reconstruction"),
        TensorSpec(np.dtype(np.float64), (-1,), "bpp"),
      ]
    ),
  )


def requirements():
  """Pinned to this environment (MLflow would otherwise import the model in a subprocess to
  guess them)."""
  from importlib.metadata import version

  return [
    f"{name}=={version(name)}"
    for name in ("tensorflow", "tensorflow-compression", "numpy", "cbexp")
  ]


@contextlib.contextmanager
def quiet_logging():
  """Logging a model makes MLflow warn about cloudpickle and type hints, draw download bars and
  load the export (TensorFlow's custom-gradient notes): not the user's news (CBEXP_DEBUG=1
  shows them)."""
  if os.environ.get("CBEXP_DEBUG"):
    yield
    return
  loggers = [logging.getLogger(name) for name in ("mlflow", "tensorflow", "absl")]
  levels = [logger.level for logger in loggers]
  try:
    for logger in loggers:
      logger.setLevel(logging.ERROR)
    with (
      warnings.catch_warnings(),
      unittest.mock.patch.dict(os.environ, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),
    ):
      warnings.simplefilter("ignore")
      yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def log_model(tracking_uri, run_id, model_dir, export_dir, example):
  """Logs the MLflow model of a run (``runs:/<run id>/model``); -> the logged model's URI.
  ``example``: a small uint8 image, stored as the input example."""
  client = mlflow.MlflowClient(tracking_uri)
  status = client.get_run(run_id).info.status
  with fluent_store(tracking_uri), quiet_logging(), mlflow.start_run(run_id=run_id):
    info = mlflow.pyfunc.log_model(
      name=ARTIFACT_PATH,
      python_model=CodecModel(),
      signature=signature(),
      artifacts={MODEL_DIR: str(model_dir), EXPORT: str(export_dir)},
      input_example=np.asarray(example, np.uint8),
      pip_requirements=requirements(),
    )
  client.update_run(run_id, status=status)  # start_run's exit ended the run: not yet done
  return info.model_uri


def register(tracking_uri, model_uri, name):
  """Registers a logged model in the Model Registry of the tracking store; -> its version."""
  with fluent_store(tracking_uri):
    return mlflow.register_model(model_uri, name).version
