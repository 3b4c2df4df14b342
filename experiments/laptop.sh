#!/usr/bin/env bash
# The laptop study: ChARM vs the checkerboard (and the hyperprior) on the ms2020 layer structure at
# tiny width, on 2 CPU cores in about 105 minutes, run for real, beside JPEG, WebP, AVIF and
# JPEG 2000 on the same images.
#
#   bash experiments/laptop.sh        # from the repository root; needs CBEXP_KODAK_DIR
#
# * training set: Kodak kodim01-10 (kodim11-12 validate), 128x128 crops, batch 4, 5000 steps,
#   Adam 1e-3 then 1e-4 for the last 10% (conf/experiment/laptop.yaml); evaluation set:
#   kodim13-24, never trained on. Every table and figure says so.
# * charm and checkerboard at 3 lambdas x seeds 0 and 1 (the spread between seeds is the
#   run-to-run noise the BD intervals include), the hyperprior at the same lambdas, seed 0. Every
#   run logs real-bitstream RD points on kodim11-12 during training, with the compute spent so
#   far: the analysis compares the models at equal steps (the test images) and at equal
#   training compute (core-seconds, on the validation images).
# * then cbexp.bench (decode speed of the trained lambda=0.0035 models, side by side in one
#   process) and cbexp.analysis (RD curves with the classical codecs and the published curves,
#   BD-rate with bootstrap intervals, against ChARM and against each classical codec, the RD
#   trajectories, the equal-compute tables, the CompressAI JSON), all written to $OUT with the
#   command, the machine and the wall time.
#
# Killed? Run it again: the sweep directory is fixed, so finished jobs are skipped and the others
# resume from their last checkpoint. Variables: PYTHON, OUT, SWEEP_DIR, STEPS, LAMBDAS, SEEDS
# (charm, checkerboard), HYPERPRIOR_SEEDS, CHARM_RD_EVERY, JOBS (parallel jobs; threads per job =
# trainer.threads), BENCH_REPEATS, BENCH_MAX_IMAGES, TRACKING (e.g.
# "tracking.uri=sqlite:////tmp/study.db"), EXTRA (more overrides for every job), CHARM_EXTRA
# (more overrides for the ChARM jobs: the CI version's fewer slices).
# CI runs a two-step version (tests/experiments/test_laptop_study.py).
set -euo pipefail
: "${CBEXP_KODAK_DIR:?set CBEXP_KODAK_DIR to the Kodak folder (python -m cbexp.datasets download-kodak <dir>)}"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-experiments/results/laptop}"
SWEEP_DIR="${SWEEP_DIR:-outputs/sweeps/laptop}"
STEPS="${STEPS:-5000}"
LAMBDAS="${LAMBDAS:-0.0018,0.0035,0.0067}"
SEEDS="${SEEDS:-0,1}"
HYPERPRIOR_SEEDS="${HYPERPRIOR_SEEDS:-0}"
CHARM_RD_EVERY="${CHARM_RD_EVERY:-500}"
JOBS="${JOBS:-2}"
BENCH_REPEATS="${BENCH_REPEATS:-3}"
BENCH_LMBDA="${BENCH_LMBDA:-0.0035}"
BENCH_MAX_IMAGES="${BENCH_MAX_IMAGES:-0}"  # 0: all 24 Kodak images
START=$(date +%s)
mkdir -p "$OUT"

COMMON=(experiment=laptop trainer.steps="$STEPS" lmbda="$LAMBDAS" hydra/launcher=local_processes
        hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$SWEEP_DIR" ${TRACKING:-} ${EXTRA:-})
# ChARM first: the longest jobs start first, so the two lanes end together. Its steps cost 3x
# a checkerboard step, so it takes RD points twice as often (in steps): the equal-compute
# comparison meets it early in its training. The same sweep directory: one sweep id and parent.
"$PYTHON" -m cbexp.run -m entropy=charm trainer.seed="$SEEDS" trainer.rd_every="$CHARM_RD_EVERY" \
  "${COMMON[@]}" ${CHARM_EXTRA:-}
"$PYTHON" -m cbexp.run -m entropy=checkerboard trainer.seed="$SEEDS" "${COMMON[@]}"
"$PYTHON" -m cbexp.run -m entropy=hyperprior trainer.seed="$HYPERPRIOR_SEEDS" "${COMMON[@]}"
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
print(",".join(found[name] for name in ("charm", "checkerboard", "hyperprior") if name in found))
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
           "environment": {k: os.environ[k] for k in ("STEPS", "LAMBDAS", "SEEDS", "JOBS",
                                                      "HYPERPRIOR_SEEDS", "CHARM_RD_EVERY")
                           if k in os.environ},
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()},
           "train_set": "Kodak kodim01-10 (kodim11-12: validation, the RD points during training)",
           "eval_set": "Kodak kodim13-24 (never trained on)",
           "wall_time_s": {"sweeps": trained - start, "bench": end - trained,
                           "total": end - start}},
          open(out, "w"), indent=2)
print(f"study done in {(end - start) / 60:.1f} min: {out}")
PY

# Last: RD curves, BD-rates with intervals, the comparison table (reads the runs from MLflow).
"$PYTHON" -m cbexp.analysis sweep_id="$SWEEP_ID" anchor=charm out="$OUT" \
  "title='Laptop study: tiny ms2020 models, $STEPS steps'" xlim=[0,1] ${TRACKING:-}

