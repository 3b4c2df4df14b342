"""A model logged to MLflow, brought to a local folder: ``runs:/`` and ``models:/`` URIs, the
names of the artifacts inside a logged cbexp model, and its model directory. Knows nothing of
codecs or Keras models (``cbexp.load`` builds them from what this downloads).

A reference is checked against the store before anything is downloaded (the run exists and is
not deleted, the path stays inside the run, there is a cbexp model there), and only the model
directory is downloaded, its ``config.yaml`` first: a refusal names the reference as typed, never
a temporary folder, and draws no progress bar."""

import contextlib
import os
import pathlib
import posixpath
import unittest.mock

from cbexp.errors import LoadError
from cbexp.tracking.store import fluent_store

ARTIFACT_PATH = "model"  # a run's MLflow model: runs:/<run id>/model
MODEL_DIR, EXPORT = "model_dir", "export"  # the artifacts of a logged cbexp model
MODEL_FILES = ("MLmodel", "config.yaml")  # a logged cbexp model has one or the other


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


@contextlib.contextmanager
def _quiet_store(tracking_uri):
  """MLflow pointed at ``tracking_uri`` (``models:/`` resolves through the fluent API's store),
  without its download progress bars: a command's output is its own lines."""
  with (
    fluent_store(tracking_uri),
    unittest.mock.patch.dict(os.environ, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),
  ):
    yield


def model_dir_uri(uri, tracking_uri):
  """The artifact URI (a folder in the store's artifact storage) of the cbexp model directory
  that ``uri`` (``runs:/`` or ``models:/``) names, checked without downloading anything but a
  logged model's MLmodel file: LoadError (naming ``uri``) for a path that leaves its run or
  model, a deleted run, no artifacts there, or artifacts that are not a cbexp model. MLflow's own
  errors (no such run or model) are raised as they are."""
  import mlflow

  with _quiet_store(tracking_uri):
    location = _location(uri, run_model_uri(uri), tracking_uri)
    names = {
      posixpath.basename(info.path.rstrip("/"))
      for info in mlflow.artifacts.list_artifacts(artifact_uri=location, tracking_uri=tracking_uri)
    }
    if not names:
      raise LoadError(f"{uri}: no artifacts there (expected a cbexp model)")
    if "config.yaml" in names:  # a plain model directory logged as the run's artifact
      return location
    if "MLmodel" not in names:
      raise LoadError(
        f"{uri}: not a cbexp model (neither an MLflow model nor a model directory: no "
        f"{' or '.join(MODEL_FILES)})"
      )
    path = _model_dir_path(mlflow.artifacts.load_text(f"{location}/MLmodel"))
  if path is None:
    raise LoadError(
      f"{uri}: an MLflow model without a cbexp model directory (no '{MODEL_DIR}' artifact in "
      "its MLmodel)"
    )
  return f"{location}/{path}"


def _location(uri, model_uri, tracking_uri):
  """Where the artifacts that ``model_uri`` names are stored: a run's artifact folder or, for a
  model the run logged (MLflow 3 stores those apart from the run), the logged model's; a
  registered model's version folder."""
  from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
  from mlflow.tracking import MlflowClient

  rest = model_uri.split(":/", 1)[1].strip("/")
  if any(part in ("..", ".") for part in rest.split("/")):
    raise LoadError(f"{uri}: a path inside a run or model may not contain '.' or '..' parts")
  client = MlflowClient(tracking_uri)
  if not model_uri.startswith("runs:/"):
    base, path = ModelsArtifactRepository.split_models_uri(model_uri)
    _refuse_deleted_source(uri, client, base)
    return _join(ModelsArtifactRepository.get_underlying_uri(base), path)
  run_id, _, path = rest.partition("/")
  run = client.get_run(run_id)
  _refuse_deleted(uri, run, "the run")
  name, _, inside = path.partition("/")
  for output in run.outputs.model_outputs if run.outputs else ():
    logged = client.get_logged_model(output.model_id)
    if logged.name == name:
      return _join(logged.artifact_location, inside)
  return _join(run.info.artifact_uri, path)


def _refuse_deleted(uri, run, what):
  if run.info.lifecycle_stage == "deleted":
    run_id = run.info.run_id
    raise LoadError(
      f"{uri}: {what} is deleted; restore it first (mlflow runs restore --run-id {run_id})"
    )


def _refuse_deleted_source(uri, client, models_uri):
  """A registered version whose source run was deleted is refused like the run itself: deleting
  the run is how a user withdraws its model. A version with no run in this store stands alone."""
  from mlflow.exceptions import MlflowException
  from mlflow.store.artifact.utils.models import get_model_name_and_version

  name, version = get_model_name_and_version(client, models_uri)
  run_id = client.get_model_version(name, version).run_id
  if not run_id:
    return
  try:
    run = client.get_run(run_id)
  except MlflowException:
    return
  _refuse_deleted(uri, run, f"its source run {run_id}")


def _join(location, path):
  return f"{location.rstrip('/')}/{path}" if path else location


def _model_dir_path(mlmodel):
  """The path of the ``model_dir`` artifact inside an MLflow model, from its MLmodel file's text;
  None when it names none, or a path that leaves the model."""
  import yaml

  try:  # MLflow names the folder after the logged path; MLmodel maps our key to it
    flavor = yaml.safe_load(mlmodel)["flavors"]["python_function"]
    path = str(flavor["artifacts"][MODEL_DIR]["path"])
  except (yaml.YAMLError, KeyError, TypeError):
    return None
  parts = path.strip("/").split("/")
  if path.startswith("/") or any(part in ("", "..", ".") for part in parts):
    return None
  return "/".join(parts)


def download(uri, tracking_uri, dst):
  """Downloads ``uri`` (a ``runs:/`` or ``models:/`` artifact URI, a file or a folder) into the
  folder ``dst``, without progress bars; -> the local path. MLflow's own errors are raised as
  they are."""
  import mlflow

  pathlib.Path(dst).mkdir(parents=True, exist_ok=True)  # MLflow wants an existing folder
  with _quiet_store(tracking_uri):
    return pathlib.Path(
      mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri
      )
    )
