"""Float vs exact numerics decoded in another numeric environment (a small check; the full matrix
is ``cbexp conformance``).

    python experiments/exact_cross_env.py encode WORK_DIR MODEL_DIR IMAGE [IMAGE ...]
    <environment> python experiments/exact_cross_env.py decode WORK_DIR

``encode`` writes, for float and exact numerics, each image's strings and the encoder's own
reconstruction; ``decode`` (run under other env vars: TF_ENABLE_ONEDNN_OPTS, ONEDNN_MAX_CPU_ISA,
CBEXP_THREADS) decodes them and prints per numerics how many images decode to exactly the
encoder's image, and how many fail with an error.
"""

import json
import os
import pathlib
import sys

import numpy as np


def main(mode, work, *rest):
  import tensorflow as tf

  threads = int(os.environ.get("CBEXP_THREADS", "0"))
  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  from cbexp.images import load_image
  from cbexp.load import load_model
  from cbexp.models.compression import Compressed

  work = pathlib.Path(work)
  if mode == "encode":
    model_dir, images = rest[0], rest[1:]
    spec = {"model_dir": model_dir, "images": {}}
    for numerics in ("float", "exact"):
      model, _ = load_model(model_dir, numerics=numerics)
      for path in images:
        name = f"{numerics}_{pathlib.Path(path).stem}"
        compressed = model.compress(tf.constant(load_image(path)))
        np.save(work / f"{name}.npy", model.decompress(compressed).numpy())
        spec["images"][name] = {
          "numerics": numerics,
          "shape": list(compressed.image_shape),
          "strings": [s.hex() for s in compressed.strings],
        }
    (work / "spec.json").write_text(json.dumps(spec))
    return
  spec = json.loads((work / "spec.json").read_text())
  models = {n: load_model(spec["model_dir"], numerics=n)[0] for n in ("float", "exact")}
  result = {n: {"identical": 0, "different": 0, "error": 0} for n in models}
  for name, item in spec["images"].items():
    model = models[item["numerics"]]
    try:
      image = model.decompress(
        Compressed([bytes.fromhex(s) for s in item["strings"]], tuple(item["shape"]))
      ).numpy()
      same = np.array_equal(image, np.load(work / f"{name}.npy"))
      result[item["numerics"]]["identical" if same else "different"] += 1
    except tf.errors.InvalidArgumentError:
      result[item["numerics"]]["error"] += 1
  env = {
    k: os.environ.get(k, "")
    for k in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "CBEXP_THREADS")
  }
  print(json.dumps({"environment": env, "model_dir": spec["model_dir"], "result": result}))


if __name__ == "__main__":
  main(*sys.argv[1:])
