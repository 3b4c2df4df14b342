"""The end of a training run (the chief's): the final evaluation with real .cbx bitstreams, the
model's size and decode complexity, the model directory and export, and the MLflow model (logged,
and registered when ``tracking.register_as`` is set). ``evaluate_and_save`` does all of it.
"""

import shutil
import sys

from tqdm import tqdm

from cbexp import images
from cbexp.codec import model_dir as model_io
from cbexp.codec import savedmodel as export
from cbexp.codec.codec import Codec
from cbexp.config import memory_budget_mb
from cbexp.evaluation import complexity, evaluate, size
from cbexp.evaluation.metrics import mse_from_psnr
from cbexp.tracking import pyfunc, store
from cbexp.training.progress import log


def evaluate_and_save(model, cfg, eval_paths, run_dir, client, run_id, metrics):
  """Evaluation, the model's files and its MLflow model, all logged to the run, which is then
  FINISHED. Returns the evaluation summary (plus ``rd_loss``)."""
  model.set_memory_budget(memory_budget_mb(cfg))
  model.build_coders()
  # The very functions an export stores, through real .cbx bytes: the numbers of `cbexp codec
  # eval` on the saved model directory (one evaluation path).
  codec = Codec.from_model(model, cfg, f"run {run_id}")
  per_image, summary = evaluate_images(codec, model, cfg, eval_paths, run_dir)
  metrics.add({f"eval/{k}": v for k, v in summary.items()}, cfg.trainer.steps)
  metrics.add(model_metrics(model), cfg.trainer.steps)
  metrics.flush()
  client.log_artifact(run_id, str(run_dir / "eval" / "per_image.csv"), "eval")
  save_model(model, cfg, codec, eval_paths[0], run_dir, client, run_id)
  log_size_summary(model, cfg, run_dir, client, run_id)
  client.set_terminated(run_id, "FINISHED")
  summary["rd_loss"] = rd_loss(summary["bpp"], per_image["psnr"], cfg.lmbda)
  return summary


def evaluate_images(codec, model, cfg, eval_paths, run_dir):
  """-> (per-image table, summary) of the evaluation; the table goes to eval/per_image.csv."""
  progress = tqdm(
    total=len(eval_paths), desc="evaluate", unit="image", disable=not sys.stderr.isatty()
  )
  per_image, summary = evaluate.evaluate(
    codec,
    eval_paths,
    warmup=cfg.eval.warmup,
    progress=lambda row: progress.update(1),
    estimate_bits=model.estimate_bits,
  )
  progress.close()
  eval_dir = run_dir / "eval"
  eval_dir.mkdir(exist_ok=True)
  per_image.to_csv(eval_dir / "per_image.csv", index=False)
  return per_image, summary


def model_metrics(model):
  """The parameter count, and the decode complexity where it can be counted."""
  values = {
    "model/trainable_parameters": sum(
      int(v.shape.num_elements()) for v in model.trainable_variables
    )
  }
  try:
    values["model/decode_kmac_per_pixel"] = complexity.decode_kmac_per_pixel(model)["total"]
  except Exception as error:  # another module's code: report, do not lose the run
    log.warning(f"warning: decode complexity not logged ({error})")
  return values


def save_model(model, cfg, codec, example_path, run_dir, client, run_id):
  """The model directory and the export, logged as the run's MLflow model (runs:/<id>/model:
  the export is what pyfunc's predict runs, with a signature and an input example)."""
  model_dir = model_io.save_model_dir(model, cfg, run_dir / "model")
  shutil.rmtree(run_dir / "export", ignore_errors=True)  # an earlier attempt's, if any
  export.save(model, cfg, run_dir / "export", module=codec.module)
  example = images.load_image(example_path)[:64, :64]
  uri = store.resolve_uri(cfg.tracking.uri)
  model_uri = pyfunc.log_model(uri, run_id, model_dir, run_dir / "export", example)
  client.set_tag(run_id, "model_uri", model_uri)
  name = cfg.tracking.get("register_as")
  if name:
    version = pyfunc.register(uri, model_uri, name)
    client.set_tag(run_id, "registered_model", f"models:/{name}/{version}")
    log.info(f"registered as models:/{name}/{version}")


def log_size_summary(model, cfg, run_dir, client, run_id):
  """summary.txt: the parameter counts of ``cbexp summary``."""
  try:
    (run_dir / "summary.txt").write_text(size.summarize(model, cfg) + "\n")
    client.log_artifact(run_id, str(run_dir / "summary.txt"))
  except Exception as error:
    log.warning(f"warning: summary.txt not logged ({error})")


def rd_loss(bpp, psnr, lmbda):
  """The rate-distortion loss of the evaluation: bpp + lmbda * MSE (MSE from each image's PSNR,
  averaged over the images)."""
  return bpp + lmbda * float(mse_from_psnr(psnr).mean())
