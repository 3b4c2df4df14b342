"""The MLflow store every command talks to: its URI, a fast reachability check and opening it.

Default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<working directory>/mlflow.db``. Several
processes may write one sqlite file (MLflow's busy timeout makes a writer wait for the lock); only
the store's creation takes cbexp's own lock (``open_store``).
"""

import contextlib
import os
import pathlib
import unittest.mock
import urllib.error
import urllib.request

from cbexp.errors import CbexpError


class TrackingError(CbexpError, ValueError):
  """The tracking store cannot be used; the message says which and why."""


def default_uri(cwd=None):
  """The default store of every command: $MLFLOW_TRACKING_URI, else the sqlite file
  ``mlflow.db`` in the working directory (artifacts then go to ``./mlruns``)."""
  return (
    os.environ.get("MLFLOW_TRACKING_URI")
    or f"sqlite:///{pathlib.Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"
  )


def resolve_uri(uri):
  """Config ``tracking.uri`` -> a tracking URI (null: ``default_uri()``)."""
  return str(uri) if uri else default_uri()


# Store kinds MLflow 3 accepts as a tracking URI (a database, a server, or a local folder).
URI_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


@contextlib.contextmanager
def fluent_store(uri):
  """Points MLflow's fluent API (``start_run``, ``log_model``, ``register_model``, ``models:/``
  and logged-model downloads), which reads the process-wide tracking and registry URIs, at
  ``uri`` inside the block, restored after. A URI set earlier in the process with
  ``mlflow.set_tracking_uri`` outranks the environment variables, so both are set (as MLflow's
  own ``_use_tracking_uri`` does) and the previous values put back."""
  import mlflow
  from mlflow.tracking._model_registry import utils as registry_utils
  from mlflow.tracking._tracking_service import utils as tracking_utils

  previous = (tracking_utils._tracking_uri, registry_utils._registry_uri)
  with unittest.mock.patch.dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri):
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
      yield
    finally:
      mlflow.set_tracking_uri(previous[0])
      registry_utils._registry_uri = previous[1]


def check_uri(uri, timeout=5.0):
  """Fails fast, with one line, if the store cannot be reached: before any training."""
  scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
  if scheme not in URI_SCHEMES:
    raise TrackingError(
      f"tracking.uri {uri}: unsupported scheme '{scheme}' ({', '.join(URI_SCHEMES)})"
    )
  if uri.startswith(("http://", "https://")):
    try:
      with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
        response.read()
    except (urllib.error.URLError, OSError) as error:
      reason = getattr(error, "reason", error)
      raise TrackingError(f"tracking.uri {uri}: MLflow server unreachable ({reason})") from None
  elif uri.startswith("sqlite:///"):
    database = pathlib.Path(uri[len("sqlite:///") :])
    folder = database.parent
    if not folder.is_dir():
      raise TrackingError(f"tracking.uri {uri}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
      raise TrackingError(f"tracking.uri {uri}: folder {folder} is not writable")
    if database.exists() and not (database.is_file() and os.access(database, os.R_OK | os.W_OK)):
      raise TrackingError(f"tracking.uri {uri}: {database} is not a readable and writable file")


def open_store(uri):
  """Creates (or migrates) the store and checks that it is an MLflow store, with one line if
  not. A sqlite store is created under an exclusive file lock (``<database>.lock``): processes
  started together on a fresh store would otherwise run MLflow's schema migration at the same
  time and leave it half-migrated. -> an MlflowClient."""
  from mlflow.tracking import MlflowClient

  lock = None
  if uri.startswith("sqlite:///"):
    import fcntl

    lock = open(uri[len("sqlite:///") :] + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
  try:
    client = MlflowClient(tracking_uri=uri)  # builds (creates, migrates) the store
    client.search_experiments(max_results=1)
  except Exception as error:
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    if "_alembic_tmp" in message:
      raise TrackingError(
        f"tracking.uri {uri}: the store is half-migrated (an interrupted "
        f"schema migration); move it away and start again, or repair it "
        f"with `mlflow db upgrade {uri}`"
      ) from None
    raise TrackingError(
      f"tracking.uri {uri}: not a usable MLflow store ({message[:300]})"
    ) from None
  finally:
    if lock is not None:
      lock.close()
  return client


# MLflow 3's UI opens an experiment in its GenAI view unless the experiment says what it is; this
# kind opens the "Model training" view (runs, training curves, models).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client, name):
  experiment = client.get_experiment_by_name(name)
  if experiment is None:
    try:
      return client.create_experiment(name, tags=EXPERIMENT_KIND)
    except Exception:  # created meanwhile by a parallel job
      experiment = client.get_experiment_by_name(name)
      if experiment is None:
        raise
  for key, value in EXPERIMENT_KIND.items():
    if key not in experiment.tags:
      client.set_experiment_tag(experiment.experiment_id, key, value)
  return experiment.experiment_id
