"""RD during training and the compute it took. Every ``trainer.rd_every`` steps the validation
images go through real ``.cbx`` bytes, by the evaluation's own path
(``cbexp.evaluation.evaluate``), with the model as it is at that step; the point is logged as
``rd/*`` against the step, beside the training compute spent so far (``compute/*``).

The codec is built on a copy of the model: range-coding tables built on the training model
would become variables of its checkpoints. ``TrainingCompute`` counts the cost of the training
steps alone (not validation, RD points or checkpoints): the process's CPU seconds over all its
threads (core-seconds) and wall seconds. It is saved beside each checkpoint, so a resumed run
goes on counting from the restored step.
"""

import json
import pathlib
import re
import time

from cbexp import files
from cbexp.config import build_model, memory_budget_mb
from cbexp.evaluation import evaluate
from cbexp.models.precision import copy_weights

COMPUTE_FILE = "compute.json"  # in the checkpoint folder: {step: {cpu_s, wall_s, rd_s}}
PER_IMAGE_PREFIX = "rd_image/"  # rd_image/<image>/<key>: one RD point's per-image values
PER_IMAGE = ("bpp", "psnr", "ms_ssim")


class TrainingCompute:
  """Seconds spent in training steps (``cpu_s``: process CPU time, every thread; ``wall_s``)
  and in RD points (``rd_s``, wall), cumulative from step 0 of the run."""

  def __init__(self, folder, start, keep):
    """``start``: the step resumed from (0: a new run); ``keep``: how many checkpoints' totals
    to keep (the checkpoints kept, and one more)."""
    self.path, self.keep = pathlib.Path(folder) / COMPUTE_FILE, keep + 1
    saved = self._read().get(str(start), {}) if start else {}
    self.cpu_s = float(saved.get("cpu_s", 0.0))
    self.wall_s = float(saved.get("wall_s", 0.0))
    self.rd_s = float(saved.get("rd_s", 0.0))
    self._since = None

  def _read(self):
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}  # no file (a new run, or checkpoints from before it existed): count from here

  def start(self):
    self._since = (time.process_time(), time.perf_counter())

  def stop(self):
    cpu, wall = self._since
    self.cpu_s += time.process_time() - cpu
    self.wall_s += time.perf_counter() - wall

  def metrics(self):
    return {"compute/cpu_s": self.cpu_s, "compute/wall_s": self.wall_s, "compute/rd_s": self.rd_s}

  def save(self, step):
    """Records the totals at ``step`` (a checkpoint's), with those of the newest checkpoints."""
    saved = self._read()
    saved[str(step)] = {"cpu_s": self.cpu_s, "wall_s": self.wall_s, "rd_s": self.rd_s}
    self.path.parent.mkdir(parents=True, exist_ok=True)
    newest = sorted(saved, key=int)[-self.keep :]
    files.write_atomic(self.path, json.dumps({k: saved[k] for k in newest}, indent=1))


class RDProbe:
  """A real-bitstream RD point of the training model on ``paths`` (the validation images)."""

  def __init__(self, cfg, paths):
    self.cfg, self.paths = cfg, list(paths)
    self.copy = build_model(cfg)  # outside any strategy: a plain model on this process
    self.copy.set_memory_budget(memory_budget_mb(cfg))
    self.weights = list(self.copy.variables)  # before coders add their tables

  def __call__(self, model, compute):
    """-> the ``rd/*`` metrics of ``model`` now; the time taken is added to ``compute.rd_s``."""
    import tensorflow as tf

    from cbexp.codec.codec import Codec

    start = time.perf_counter()
    copy_weights(model, self.copy, self.weights)  # float32, whatever the training precision
    self.copy.build_coders()
    codec = Codec.from_model(self.copy, self.cfg, "training")
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # each point traces new codec functions: no retracing warnings
    try:
      per_image, summary = evaluate.evaluate(codec, self.paths, warmup=False)
    finally:
      logger.setLevel(level)
    compute.rd_s += time.perf_counter() - start
    metrics = {
      f"rd/{key}": summary[key] for key in ("bpp", "psnr", "ms_ssim", "ms_ssim_db", "num_images")
    }
    for row in per_image.itertuples():  # per image: intervals over images in the analysis
      for key in PER_IMAGE:
        metrics[f"{PER_IMAGE_PREFIX}{image_key(row.image)}/{key}"] = getattr(row, key)
    return metrics


def image_key(name):
  """An image file's name as a metric-key part (MLflow allows letters, digits, ``_-. /``)."""
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
