"""A model logged to MLflow, brought to a local folder: ``runs:/`` and ``models:/`` URIs, the
names of the artifacts inside a logged cbexp model, and its model directory. Knows nothing of
codecs or Keras models (``cbexp.load`` builds them from what this downloads)."""

import pathlib

from cbexp.tracking.store import fluent_store

ARTIFACT_PATH = "model"  # a run's MLflow model: runs:/<run id>/model
MODEL_DIR, EXPORT = "model_dir", "export"  # the artifacts of a logged cbexp model


def run_model_uri(uri):
  """``runs:/<run id>`` -> ``runs:/<run id>/model`` (the run's MLflow model); other URIs as
  they are."""
  rest = uri[len("runs:/") :].strip("/") if uri.startswith("runs:/") else ""
  return f"runs:/{rest}/{ARTIFACT_PATH}" if rest and "/" not in rest else uri


def missing_store(tracking_uri):
  """The sqlite file a ``sqlite:///`` tracking URI names, if it does not exist (MLflow would
  create an empty store there); None otherwise."""
  if not tracking_uri.startswith("sqlite:///"):
    return None
  db = pathlib.Path(tracking_uri[len("sqlite:///") :])
  return None if db.is_file() else db


def download(uri, tracking_uri, dst):
  """Downloads ``uri`` (a ``runs:/`` or ``models:/`` URI) into the folder ``dst``; -> the local
  path. MLflow's own errors (no such run, model or artifact) are raised as they are."""
  import mlflow

  with fluent_store(tracking_uri):  # models:/ resolves through the fluent API's store
    return pathlib.Path(
      mlflow.artifacts.download_artifacts(
        artifact_uri=run_model_uri(uri), dst_path=str(dst), tracking_uri=tracking_uri
      )
    )


def model_dir_in(local):
  """The cbexp model directory inside a downloaded MLflow model: the ``model_dir`` artifact its
  MLmodel file names, or ``local`` itself when it has no MLmodel (a run's ``model`` artifact
  that is a plain model directory); None when the MLmodel names no model directory."""
  import yaml

  local = pathlib.Path(local)
  if not (local / "MLmodel").is_file():
    return local
  try:  # MLflow names the folder after the logged path; MLmodel maps our key to it
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return local / flavor["artifacts"][MODEL_DIR]["path"]
  except (yaml.YAMLError, KeyError, TypeError):
    return None
