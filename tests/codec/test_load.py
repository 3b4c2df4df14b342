"""``cbexp.load``: every kind of model reference (model directory, export, ``runs:/``,
``models:/``) gives the same codec and model, and a reference that cannot be used is one
``LoadError`` line that names it as typed."""

import subprocess
import sys

import numpy as np
import pytest

from cbexp.codec import savedmodel
from cbexp.codec.codec import Codec
from cbexp.codec.model_dir import save_model_dir
from cbexp.config import compose
from cbexp.load import LoadError, ModelRef, load_codec, load_model
from helpers.models import tiny_overrides


def random_image(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def references(model_factory, tmp_path_factory):
  """A tiny model as a model directory, an export, an MLflow run's model (logged as cbexp logs
  it: pyfunc with the model directory and the export), a run whose ``model`` artifact is a plain
  model directory, and a registered model; -> (in-memory codec, tracking URI, {kind: ref})."""
  import mlflow

  from cbexp.tracking import pyfunc
  from cbexp.tracking.store import fluent_store, open_store

  folder = tmp_path_factory.mktemp("load")
  overrides = tiny_overrides("checkerboard")
  cfg = compose(overrides)
  model = model_factory(overrides)
  save_model_dir(model, cfg, folder / "model")
  savedmodel.save(model, cfg, folder / "export")
  uri = f"sqlite:///{folder / 'mlflow.db'}"
  client = open_store(uri)
  experiment = client.create_experiment("load")
  logged = client.create_run(experiment).info.run_id
  model_uri = pyfunc.log_model(uri, logged, folder / "model", folder / "export", random_image(8, 8))
  version = pyfunc.register(uri, model_uri, "tiny")
  with fluent_store(uri), mlflow.start_run(experiment_id=experiment) as run:
    mlflow.log_artifacts(str(folder / "model"), artifact_path="model")
  refs = {
    "model_dir": str(folder / "model"),
    "export": str(folder / "export"),
    "run": f"runs:/{logged}",
    "run_path": f"runs:/{logged}/model",
    "plain_run": f"runs:/{run.info.run_id}",
    "registered": f"models:/tiny/{version}",
  }
  return Codec.from_model(model, cfg), uri, refs


@pytest.mark.parametrize(
  "name", ["model_dir", "export", "run", "run_path", "plain_run", "registered"]
)
def test_every_reference_kind_gives_the_same_codec(references, name):
  memory, uri, refs = references
  loaded = load_codec(refs[name], tracking_uri=uri)
  assert loaded.source == refs[name]
  assert (loaded.entropy_model, loaded.fingerprint) == ("checkerboard", memory.fingerprint)
  image = random_image(40, 50)
  stream = loaded.encode(image)
  assert stream == memory.encode(image)
  np.testing.assert_array_equal(loaded.decode(stream), memory.decode(stream))


@pytest.mark.parametrize("name", ["model_dir", "run", "registered"])
def test_every_reference_but_an_export_gives_the_trained_model(references, name):
  memory, uri, refs = references
  model, cfg = load_model(refs[name], tracking_uri=uri)
  assert cfg.entropy.name == "checkerboard"
  assert Codec.from_model(model, cfg).fingerprint == memory.fingerprint  # coders built


def test_an_export_has_no_model_to_load(references):
  _, _, refs = references
  with pytest.raises(
    LoadError, match="an export holds the codec's functions, not the model; use its model directory"
  ):
    load_model(refs["export"])


def test_references_parse_into_their_kinds_without_tensorflow(references):
  _, _, refs = references
  kinds = {name: ModelRef.parse(ref).kind for name, ref in refs.items()}
  assert kinds == {
    "model_dir": "model_dir",
    "export": "export",
    "run": "run",
    "run_path": "run",
    "plain_run": "run",
    "registered": "registered",
  }
  script = (
    "import sys; from cbexp.load import ModelRef; "
    f"print([ModelRef.parse(r).kind for r in {list(refs.values())!r}]); "
    "assert 'tensorflow' not in sys.modules"
  )
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
  "case",
  [
    "missing path",
    "neither",
    "a file",
    "empty runs:/",
    "missing run",
    "missing registered model",
    "missing store",
  ],
)
def test_an_unusable_reference_is_one_line_naming_it_as_typed(references, tmp_path, case):
  _, uri, refs = references
  (tmp_path / "neither").mkdir()
  (tmp_path / "a_file.txt").write_text("x")
  reference, message = {
    "missing path": (str(tmp_path / "nothing"), "no such model"),
    "neither": (str(tmp_path / "neither"), "not a model"),
    "a file": (str(tmp_path / "a_file.txt"), "not a model"),
    "empty runs:/": ("runs:/", "nothing after runs:/"),
    "missing run": ("runs:/0123456789abcdef", "0123456789abcdef"),
    "missing registered model": ("models:/nonesuch/1", "nonesuch"),
    "missing store": (refs["run"], "no MLflow tracking store at"),
  }[case]
  tracking_uri = f"sqlite:///{tmp_path / 'none.db'}" if case == "missing store" else uri
  for load in (load_codec, load_model):
    with pytest.raises(LoadError) as error:
      load(reference, tracking_uri=tracking_uri)
    text = str(error.value)
    assert text.startswith(f"{reference}: ") and message in text, text
    assert "\n" not in text and "cbexp_model_" not in text  # no temporary folder
  if case in ("missing path", "neither"):  # the four kinds are named
    for kind in ("saved_model.pb", "config.yaml", "runs:/", "models:/"):
      assert kind in text, text
