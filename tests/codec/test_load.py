"""``cbexp.load``: every kind of model reference (model directory, export, ``runs:/``,
``models:/``) gives the same codec and model, and a reference that cannot be used is one
``LoadError`` line that names it as typed."""

import re
import subprocess
import sys

import numpy as np
import pytest

from cbexp.codec import savedmodel
from cbexp.codec.codec import Codec
from cbexp.codec.model_dir import save_model_dir
from cbexp.config import compose
from cbexp.load import LoadError, ModelRef, load_codec, load_model
from helpers.codec_cli import assert_refused, run_codec
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


@pytest.fixture(scope="module")
def store_cases(references, tmp_path_factory):
  """Runs and registered models of the same store that must be refused: a run whose model config
  names code, a deleted run, a run without artifacts, a run whose ``model`` artifact is not a
  cbexp model, that run registered, a deleted version of a registered model, and a version whose
  source run is deleted; -> {case:
  reference as typed}."""
  import shutil

  import mlflow
  import yaml

  from cbexp.tracking.store import fluent_store, open_store

  _, uri, refs = references
  folder = tmp_path_factory.mktemp("store_cases")
  hostile = folder / "hostile"
  shutil.copytree(refs["model_dir"], hostile)
  config = yaml.safe_load((hostile / "config.yaml").read_text())
  config["entropy"]["payload"] = {"_target_": "builtins.open", "file": str(folder / "victim")}
  (hostile / "config.yaml").write_text(yaml.safe_dump(config))
  (folder / "foreign").mkdir()
  (folder / "foreign" / "notes.txt").write_text("not a model")
  client = open_store(uri)
  experiment = client.create_experiment("refused")
  runs = {}
  with fluent_store(uri):
    for name, source in (("hostile", hostile), ("deleted", refs["model_dir"]), ("empty", None)):
      with mlflow.start_run(experiment_id=experiment) as run:
        if source is not None:
          mlflow.log_artifacts(str(source), artifact_path="model")
      runs[name] = run.info.run_id
    with mlflow.start_run(experiment_id=experiment) as run:
      mlflow.log_artifacts(str(folder / "foreign"), artifact_path="model")
    runs["foreign"] = run.info.run_id
  client.create_registered_model("withdrawn")  # a cbexp model whose source run is deleted below
  client.create_model_version(
    "withdrawn", f"{client.get_run(runs['deleted']).info.artifact_uri}/model", runs["deleted"]
  )
  for name in ("foreign", "dropped"):  # versions of the foreign run's artifact
    client.create_registered_model(name)
    version = client.create_model_version(
      name, f"{run.info.artifact_uri}/model", run.info.run_id
    ).version
  client.delete_run(runs["deleted"])
  client.delete_model_version("dropped", version)
  return {
    "hostile": f"runs:/{runs['hostile']}",
    "deleted": f"runs:/{runs['deleted']}",
    "empty": f"runs:/{runs['empty']}",
    "foreign": f"runs:/{runs['foreign']}",
    "escape": f"runs:/{runs['empty']}/../../../../etc",
    "foreign_registered": "models:/foreign/1",
    "deleted_version": f"models:/dropped/{version}",
    "deleted_source": "models:/withdrawn/1",
  }


STORE_REFUSALS = {
  "hostile": "config.yaml: entropy.payload: a mapping is not allowed here",
  "deleted": r"the run is deleted; restore it first \(mlflow runs restore --run-id ",
  "empty": "no artifacts there",
  "foreign": "not a cbexp model",
  "escape": "a path inside a run or model may not contain '.' or '..' parts",
  "foreign_registered": "not a cbexp model",
  "deleted_version": r"Model Version \(name=dropped, version=1\) not found",
  "deleted_source": r"its source run \w+ is deleted; restore it first \(mlflow runs restore ",
}


@pytest.mark.parametrize("case", [*STORE_REFUSALS, "export of a foreign run"])
def test_a_refused_store_model_is_one_line_naming_it_as_typed(
  references, store_cases, tiny_files, tmp_path, case
):
  """In a fresh process: exit status 2, one line that names the reference as typed (no progress
  bar, no temporary folder), within a time limit (the process ends), nothing downloaded left
  behind. A model config that names code is refused before its weights are downloaded."""
  _, uri, _ = references
  folder, _ = tiny_files
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  env = {"TMPDIR": str(scratch)}
  if case == "export of a foreign run":
    reference, message = store_cases["foreign"], STORE_REFUSALS["foreign"]
    output = tmp_path / "export"
    result = run_codec(
      *("--from", reference, "--out", output, "--tracking-uri", uri),
      cwd=tmp_path,
      module="cbexp.export",
      timeout=300,
      env=env,
    )
  else:
    reference, message = store_cases[case], STORE_REFUSALS[case]
    output = tmp_path / "out.png"
    result = run_codec(
      *("decompress", "--model", reference, "--tracking-uri", uri, folder / "good.cbx", output),
      cwd=tmp_path,
      timeout=300,
      env=env,
    )
  assert_refused(result, output, f"^cbexp [a-z]+: error: {re.escape(reference)}: {message}")
  assert not list(scratch.iterdir())


@pytest.mark.parametrize("entropy", ["charm", "checkerboard"])
def test_weights_are_restored_one_at_a_time_as_tensorflow_restores_them(
  entropy, tmp_path, monkeypatch
):
  """``restore_weights`` gives every variable the value TensorFlow's ``Checkpoint.read`` gives it
  (a variable it missed would keep its fresh random value), reading one tensor at a time, and
  checks a value's shape from the index before reading it."""
  import tensorflow as tf

  from cbexp.codec import model_dir
  from cbexp.config import build_model

  cfg = compose(tiny_overrides(entropy))
  saved = build_model(cfg)
  saved.build_coders()
  save_model_dir(saved, cfg, tmp_path / "model")
  prefix = str(tmp_path / "model" / "weights" / "model")
  by_tensorflow, ours = build_model(cfg), build_model(cfg)
  tf.train.Checkpoint(model=by_tensorflow).read(prefix).expect_partial()
  reads = []
  load = tf.train.load_checkpoint

  class CountingReader:
    def __init__(self, reader):
      self.reader = reader

    def __getattr__(self, name):
      return getattr(self.reader, name)

    def get_tensor(self, key):
      reads.append(key)
      return self.reader.get_tensor(key)

  monkeypatch.setattr(tf.train, "load_checkpoint", lambda p: CountingReader(load(p)))
  model_dir.restore_weights(ours, prefix)
  assert len(reads) == len(ours.weights) + 1  # and the object graph; the coders' tables not
  assert len(ours.weights) == len(by_tensorflow.weights)
  for mine, theirs in zip(ours.weights, by_tensorflow.weights):
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

  other = build_model(compose(tiny_overrides(entropy, "entropy.hidden_filters=[8,8]")))
  reads.clear()
  with pytest.raises(ValueError, match="kernel"):
    model_dir.restore_weights(other, prefix)
  assert all("kernel" not in key for key in reads)  # refused before its value was read


UNTRAINED = """
import hashlib
import sys
from cbexp.load import build_untrained
model, _ = build_untrained(["transform=tiny", "entropy=hyperprior"], seed=int(sys.argv[1]))
print(hashlib.sha256(b"".join(w.numpy().tobytes() for w in model.weights)).hexdigest())
"""


def test_an_untrained_model_of_a_seed_is_the_same_in_every_process():
  """``build_untrained(seed=...)`` (the memory benchmark's models): the same weights in every
  process, other weights for another seed (Keras's initializers draw from Python's and NumPy's
  generators too, not only TensorFlow's)."""

  def fingerprint(seed):
    return subprocess.run(
      [sys.executable, "-c", UNTRAINED, str(seed)], capture_output=True, text=True, check=True
    ).stdout.split()[-1]

  first = fingerprint(0)
  assert fingerprint(0) == first
  assert fingerprint(1) != first
