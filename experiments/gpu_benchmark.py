"""The GPU benchmark, in one command (issue 26): what cbexp's CPU figures cannot say.

  python experiments/gpu_benchmark.py --out experiments/results/gpu     # on a GPU machine
  python experiments/gpu_benchmark.py --smoke --out /tmp/gpu-smoke      # anywhere: a few steps

Needs CBEXP_KODAK_DIR. Parts, each in fresh processes (so that a device setting or a failure
stays in its part), planned to fit about 8 minutes on one GPU:

  startup      import TensorFlow and run a first convolution on the device, twice: with an empty
               CUDA compile cache (TensorFlow 2.14 compiles PTX for a GPU newer than its build)
               and with the cache filled; the other parts use that cache (CUDA_CACHE_PATH).
  train        training steps per second at the paper configuration (batch 8 x 256x256 crops),
               checkerboard and ChARM, in float32 with TF32 off, float32 with TF32 on, and
               mixed_bfloat16 (trainer.precision): the training loop's own step, each step
               waited for, after warm-up steps.
  decode       decode time per Kodak image of both paper models (untrained weights: network
               work as trained, range coding not): cbexp.bench's protocol.
  rd_cost      the laptop recipe, shortened, trained in float32 and in mixed_bfloat16 with the
               same seed and lambdas, evaluated with real bitstreams; cbexp.analysis gives the
               BD-PSNR of mixed_bfloat16 against float32 with its bootstrap interval.
  conformance  files encoded on the CPU decoded on the GPU (cbexp.conformance configs=gpu),
               float and exact numerics.

--smoke runs every part with tiny models, a few steps, the checkerboard model only (and float
numerics only in conformance), on whatever device there is (the CPU here: the GPU-only settings
are recorded as not applicable), to test the script. Results: gpu_benchmark.json (every
measurement, the command, the machine) and gpu_benchmark.md.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTROPIES = ("checkerboard", "charm")
MODES = ("float32", "tf32", "mixed_bfloat16")  # float32 is with TF32 off
TINY = ["transform=tiny", "entropy.hidden_filters=[16,16]"]
PARTS = ("startup", "train", "decode", "rd_cost", "conformance")
FIRST_OP = """
import time
start = time.perf_counter()
import tensorflow as tf
x = tf.random.uniform([1, 256, 256, 3])
k = tf.random.uniform([5, 5, 3, 192])
float(tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME")))
print(time.perf_counter() - start)
"""


def environment(cache):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
  env["CUDA_CACHE_PATH"] = str(cache)
  env["CUDA_CACHE_MAXSIZE"] = str(4 << 30)  # the default (256 MB) can evict TensorFlow's PTX
  env.pop("CBEXP_DEBUG", None)
  return env


def run(command, env, cwd, timeout=1800):
  """Runs a command; -> its stdout, or raises with its last lines."""
  done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  if done.returncode:
    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
    raise RuntimeError(f"{' '.join(map(str, command[:4]))} ...: exit {done.returncode}: {tail}")
  return done.stdout


def startup(out, env):
  cold = out / "cuda_cache_cold"
  shutil.rmtree(cold, ignore_errors=True)
  timings = {}
  for name in ("cold_cache_s", "warm_cache_s"):
    stdout = run([sys.executable, "-c", FIRST_OP], {**env, "CUDA_CACHE_PATH": str(cold)}, out)
    timings[name] = round(float(stdout.strip().splitlines()[-1]), 2)
  return timings


def train_speed(entropy, smoke):
  """In this process: steps per second of each mode (MODES) for one entropy model."""
  import tensorflow as tf

  from cbexp.config import build_model, compose
  from cbexp.models.precision import optimizer_for
  from cbexp.training import distributed

  gpu = bool(tf.config.list_physical_devices("GPU"))
  batch, patch = (2, 64) if smoke else (8, 256)
  warmup, timed = (1, 2) if smoke else (5, 30)
  strategy = tf.distribute.get_strategy()
  crops = tf.data.Dataset.from_tensors(
    tf.random.stateless_uniform([batch, patch, patch, 3], [0, 1], 0, 255)
  ).repeat()
  results = {}
  for mode in MODES:
    if mode == "tf32" and not gpu:
      results[mode] = {"note": "not applicable: no GPU (TF32 is a GPU setting)"}
      continue
    tf.config.experimental.enable_tensor_float_32_execution(mode == "tf32")
    precision = "mixed_bfloat16" if mode == "mixed_bfloat16" else "float32"
    tf.keras.utils.set_random_seed(0)
    cfg = compose(
      [f"entropy={entropy}", f"trainer.precision={precision}"] + (TINY if smoke else [])
    )
    model = build_model(cfg, precision)
    optimizer = optimizer_for(tf.keras.optimizers.Adam(1e-4), precision)
    step = distributed.make_distributed_train_step(model, optimizer, strategy)
    batches = iter(strategy.experimental_distribute_dataset(crops))
    for _ in range(warmup):
      float(step(batches)["loss"])
    start = time.perf_counter()
    for _ in range(timed):
      loss = float(step(batches)["loss"])  # waits for the step, as the training loop does
    seconds = time.perf_counter() - start
    results[mode] = {
      "steps_per_s": round(timed / seconds, 3),
      "steps_timed": timed,
      "batch": f"{batch}x{patch}x{patch}",
      "final_loss": round(loss, 4),
    }
  return results


def entropies(smoke):
  return ENTROPIES[:1] if smoke else ENTROPIES


def train(out, env, smoke):
  results = {}
  for entropy in entropies(smoke):
    command = [sys.executable, __file__, "--part-train", entropy] + (["--smoke"] if smoke else [])
    results[entropy] = json.loads(run(command, env, out).strip().splitlines()[-1])
  return results


def decode(out, env, smoke, kodak):
  csv = out / "decode" / "bench.csv"
  command = [
    sys.executable, "-m", "cbexp.bench", f"entropy={','.join(entropies(smoke))}",
    f"images={kodak}",
    f"max_images={1 if smoke else 24}", f"repeats={1 if smoke else 3}", f"out={csv}",
  ] + (TINY if smoke else [])  # fmt: skip
  run(command, env, out)
  import pandas as pd

  frame = pd.read_csv(csv)
  columns = [c for c in ("entropy", "decode_s_median", "encode_s_median", "bpp_mean") if c in frame]
  return frame[columns].to_dict(orient="records")


def rd_cost(out, env, smoke, kodak):
  """The laptop recipe (shortened) in float32 and mixed_bfloat16, then the BD-PSNR."""
  steps, lambdas, images = (4, "0.005,0.02", 1) if smoke else (1500, "0.0018,0.0067,0.025", 24)
  tracking = f"sqlite:///{out / 'rd_cost' / 'mlflow.db'}"
  (out / "rd_cost").mkdir(parents=True, exist_ok=True)
  run(
    [
      sys.executable, "-m", "cbexp.run", "-m", "experiment=laptop", "entropy=checkerboard",
      "trainer.precision=float32,mixed_bfloat16", f"lmbda={lambdas}", f"trainer.steps={steps}",
      "trainer.seed=0", f"eval.max_images={images}", f"tracking.uri={tracking}",
      f"hydra.sweep.dir={out / 'rd_cost' / 'sweep'}", "hydra/launcher=local_processes",
      "hydra.launcher.n_jobs=2",
    ]
    + (["trainer.log_every=1", "trainer.val_every=2", "trainer.checkpoint_every=2"] * smoke),
    env,
    out,
  )  # fmt: skip
  analysis = out / "rd_cost" / "analysis"
  run(
    [
      sys.executable, "-m", "cbexp.analysis", f"tracking.uri={tracking}",
      "group_by=[trainer.precision]", "anchor='checkerboard (trainer.precision=float32)'",
      "classical.codecs=[]", f"bootstrap.resamples={100 if smoke else 1000}",
      "reference.overlay=false", f"out={analysis}",
    ],
    env,
    out,
  )  # fmt: skip
  import pandas as pd

  bd = pd.read_csv(analysis / "bd_psnr.csv")
  rows = bd[bd.apply(lambda r: "mixed_bfloat16" in " ".join(map(str, r.values)), axis=1)]
  return {
    "steps": steps,
    "lambdas": lambdas,
    "eval_images": images,
    "training_set": "Kodak kodim01-10 (the laptop recipe)",
    "bd_psnr": rows.to_dict(orient="records"),
  }


def conformance(out, env, smoke, kodak, gpu):
  configs = "gpu" if gpu else "threads1"
  folder = out / "conformance"
  run(
    [
      sys.executable, "-m", "cbexp.conformance", f"entropy={','.join(entropies(smoke))}",
      f"numerics={'float' if smoke else 'float,exact'}", f"configs={configs}",
      f"max_images={1 if smoke else 4}",
      f"images={kodak}", f"out={folder}",
    ]
    + TINY,
    env,
    out,
  )  # fmt: skip
  import pandas as pd

  frame = pd.read_csv(folder / "conformance.csv")
  note = None if gpu else "no GPU: the one-thread CPU configuration stands in for configs=gpu"
  return {"configs": configs, "note": note, "rows": frame.to_dict(orient="records")}


def machine():
  from cbexp.evaluation.machine import machine_info

  info = machine_info()
  try:
    info["nvidia_smi"] = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
      capture_output=True,
      text=True,
      timeout=30,
    ).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    info["nvidia_smi"] = None
  return info


def markdown(report):
  lines = [f"# GPU benchmark{' (smoke: tiny models, a few steps)' if report['smoke'] else ''}", ""]
  m = report["machine"]
  lines += [f"Machine: {m.get('nvidia_smi') or 'no GPU'}; CPU {m.get('cpu')}; TensorFlow "
            f"{m.get('tf_version')}. Command: `{report['command']}`.", ""]  # fmt: skip
  for part, seconds in report["part_seconds"].items():
    lines.append(f"- {part}: {seconds} s" + (f" (failed: {report['errors'][part]})"
                                             if part in report["errors"] else ""))  # fmt: skip
  if "startup" in report:
    s = report["startup"]
    lines += ["", f"Start-up to a first convolution: {s['cold_cache_s']} s with an empty compile "
              f"cache, {s['warm_cache_s']} s with it filled.", ""]  # fmt: skip
  if "train" in report:
    lines += ["| entropy | mode | steps/s | batch |", "|---|---|---|---|"]
    for entropy, modes in report["train"].items():
      for mode, r in modes.items():
        lines.append(f"| {entropy} | {mode} | {r.get('steps_per_s', r.get('note'))} | "
                     f"{r.get('batch', '')} |")  # fmt: skip
  if "decode" in report:
    lines += ["", "| entropy | decode s (median) | encode s (median) | bpp |", "|---|---|---|---|"]
    for r in report["decode"]:
      lines.append(f"| {r.get('entropy')} | {r.get('decode_s_median')} | "
                   f"{r.get('encode_s_median')} | {r.get('bpp_mean')} |")  # fmt: skip
  if "rd_cost" in report:
    r = report["rd_cost"]
    lines += ["", f"RD cost of mixed_bfloat16 ({r['steps']} steps, lambdas {r['lambdas']}, "
              f"trained on {r['training_set']}, evaluated on {r['eval_images']} Kodak images):",
              "", "```", json.dumps(r["bd_psnr"], indent=1, default=str), "```"]  # fmt: skip
  if "conformance" in report:
    c = report["conformance"]
    lines += ["", f"Conformance ({c['configs']}{'; ' + c['note'] if c['note'] else ''}):", ""]
    for row in c["rows"]:
      keys = ("model", "numerics", "config", "images", "images_identical", "images_wrong",
              "images_refused", "mismatches_per_million")  # fmt: skip
      lines.append("- " + ", ".join(f"{k} {row[k]}" for k in keys if k in row))
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="experiments/results/gpu", help="results folder")
  parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps (tests)")
  parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
  parser.add_argument("--part-train", help=argparse.SUPPRESS)  # one entropy's train process
  args = parser.parse_args()
  if args.part_train:
    print(json.dumps(train_speed(args.part_train, args.smoke)))
    return 0
  kodak = os.environ.get("CBEXP_KODAK_DIR")
  if not kodak or not pathlib.Path(kodak).is_dir():
    print("gpu_benchmark.py: error: set CBEXP_KODAK_DIR to the Kodak folder", file=sys.stderr)
    return 2
  parts = [p for p in args.parts.split(",") if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    print(f"gpu_benchmark.py: error: unknown parts {sorted(unknown)}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  env = environment(out / "cuda_cache")
  report = {
    "command": " ".join(["python", "experiments/gpu_benchmark.py", *sys.argv[1:]]),
    "smoke": args.smoke,
    "machine": machine(),
    "part_seconds": {},
    "errors": {},
  }
  gpu = bool(report["machine"].get("nvidia_smi"))
  work = {
    "startup": lambda: startup(out, env),
    "train": lambda: train(out, env, args.smoke),
    "decode": lambda: decode(out, env, args.smoke, kodak),
    "rd_cost": lambda: rd_cost(out, env, args.smoke, kodak),
    "conformance": lambda: conformance(out, env, args.smoke, kodak, gpu),
  }
  for part in parts:
    start = time.perf_counter()
    try:
      report[part] = work[part]()
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as error:
      report["errors"][part] = str(error).strip().splitlines()[-1][:500]
    report["part_seconds"][part] = round(time.perf_counter() - start, 1)
    print(f"{part}: {report['part_seconds'][part]} s", flush=True)
    (out / "gpu_benchmark.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
  (out / "gpu_benchmark.md").write_text(markdown(report))
  print(markdown(report))
  return 1 if report["errors"] else 0


if __name__ == "__main__":
  sys.exit(main())
