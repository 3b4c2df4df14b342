#!/usr/bin/env bash
# The laptop study: ChARM vs checkerboard vs the hyperprior (and the serial autoregressive model)
# on the ms2020 layer structure at tiny width, on 2 CPU cores in about an hour, run for real.
#
#   bash experiments/laptop.sh        # from the repository root; needs CBEXP_KODAK_DIR
#
# * training set: Kodak kodim01-11 (kodim12 validates), 128x128 crops, batch 4, 1500 steps, Adam
#   1e-3 then 1e-4 for the last 10% (conf/experiment/laptop.yaml); evaluation set: kodim13-24,
#   never trained on. Every table and figure says so.
# * hyperprior, checkerboard, charm at 4 lambdas x seeds 0 and 1 (the spread between seeds is the
#   run-to-run noise the BD intervals include); autoregressive at the same lambdas, seed 0.
# * then cbexp.bench and cbexp.analysis (RD curves, BD-rate with bootstrap intervals over images and seeds, the
#   CompressAI JSON) and cbexp.bench (decode speed of the trained lambda=0.013 models, side by
#   side in one process), all written to $OUT with the command, the machine and the wall time.
#
# Killed? Run it again: the sweep directory is fixed, so finished jobs are skipped and the others
# resume from their last checkpoint. Variables: PYTHON, OUT, SWEEP_DIR, STEPS, LAMBDAS, SEEDS,
# JOBS (parallel jobs; threads per job = trainer.threads), BENCH_REPEATS, BENCH_MAX_IMAGES,
# TRACKING (e.g. "tracking.uri=sqlite:////tmp/study.db"), EXTRA (more overrides for every job).
# CI runs a two-step version (tests/test_laptop_study.py).
set -euo pipefail
: "${CBEXP_KODAK_DIR:?set CBEXP_KODAK_DIR to the Kodak folder (python -m cbexp.datasets download-kodak <dir>)}"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-experiments/results/laptop}"
SWEEP_DIR="${SWEEP_DIR:-outputs/sweeps/laptop}"
STEPS="${STEPS:-1500}"
LAMBDAS="${LAMBDAS:-0.0035,0.0067,0.013,0.025}"
SEEDS="${SEEDS:-0,1}"
JOBS="${JOBS:-2}"
BENCH_REPEATS="${BENCH_REPEATS:-3}"
BENCH_LMBDA="${BENCH_LMBDA:-0.013}"
BENCH_MAX_IMAGES="${BENCH_MAX_IMAGES:-0}"  # 0: all 24 Kodak images
START=$(date +%s)
mkdir -p "$OUT"

COMMON=(experiment=laptop trainer.steps="$STEPS" lmbda="$LAMBDAS" hydra/launcher=local_processes
        hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$SWEEP_DIR" ${TRACKING:-} ${EXTRA:-})
# ChARM first: the longest jobs start first, so the two lanes end together.
"$PYTHON" -m cbexp.run -m entropy=charm,checkerboard,hyperprior trainer.seed="$SEEDS" "${COMMON[@]}"
# The same sweep directory: the same sweep id and parent run.
"$PYTHON" -m cbexp.run -m entropy=autoregressive trainer.seed=0 "${COMMON[@]}"
TRAINED=$(date +%s)
SWEEP_ID=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['sweep_id'])" \
  "$SWEEP_DIR/mlflow_sweep.json")

# Decode speed of the trained models of one lambda (seed 0), one process, side by side.
MODELS=$("$PYTHON" - "$SWEEP_DIR" "$BENCH_LMBDA" <<'PY'
import pathlib, sys, yaml
found = {}
for config in sorted(pathlib.Path(sys.argv[1]).glob("*/config.yaml")):
  cfg = yaml.safe_load(config.read_text())
  if (cfg["lmbda"] == float(sys.argv[2]) and cfg["trainer"]["seed"] == 0
      and (config.parent / "model").is_dir()):
    found[cfg["entropy"]["name"]] = str(config.parent / "model")
print(",".join(found[name] for name in ("charm", "checkerboard", "hyperprior", "autoregressive")
               if name in found))
PY
)
if [ -z "$MODELS" ]; then
  echo "laptop.sh: no trained lmbda=$BENCH_LMBDA seed-0 models in $SWEEP_DIR (set BENCH_LMBDA)" >&2
  exit 2
fi
"$PYTHON" -m cbexp.bench model="$MODELS" images="$CBEXP_KODAK_DIR" repeats="$BENCH_REPEATS" \
  max_images="$BENCH_MAX_IMAGES" threads=2 out="$OUT/bench.csv"
END=$(date +%s)

"$PYTHON" - "$OUT/study.json" "$SWEEP_ID" "$START" "$TRAINED" "$END" "$*" <<'PY'
import json, os, platform, subprocess, sys
out, sweep_id, start, trained, end = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
            if line.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
json.dump({"command": "bash experiments/laptop.sh", "sweep_id": sweep_id, "git_commit": commit,
           "environment": {k: os.environ[k] for k in ("STEPS", "LAMBDAS", "SEEDS", "JOBS")
                           if k in os.environ},
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()},
           "train_set": "Kodak kodim01-11 (kodim12: validation)",
           "eval_set": "Kodak kodim13-24 (never trained on)",
           "wall_time_s": {"sweeps": trained - start, "bench": end - trained,
                           "total": end - start}},
          open(out, "w"), indent=2)
print(f"study done in {(end - start) / 60:.1f} min: {out}")
PY

# Last: RD curves, BD-rates with intervals, the comparison table (reads the runs from MLflow).
"$PYTHON" -m cbexp.analysis sweep_id="$SWEEP_ID" anchor=charm out="$OUT" \
  "title='Laptop study: tiny ms2020 models, 1500 steps'" xlim=[0,1] ${TRACKING:-}

