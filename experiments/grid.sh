#!/usr/bin/env bash
# The grid study: the checkerboard context against the serial (autoregressive) context on two
# backbones, He et al.'s two: mbt2018 (conv/GDN) and cheng2020-anchor (residual blocks, sub-pixel
# upsampling), both at tiny width, at the laptop recipe; run for real on 2 CPU cores.
#
#   bash experiments/grid.sh        # from the repository root; needs CBEXP_KODAK_DIR
#
# * training set: Kodak kodim01-10 (kodim11-12 validate), 128x128 crops, batch 4, 5000 steps,
#   Adam 1e-3 then 1e-4 for the last 10% (conf/experiment/laptop.yaml, the laptop study's recipe);
#   evaluation set: kodim13-24, never trained on.
# * per backbone: checkerboard and autoregressive at 3 lambdas, seed 0; the BD-rate of the
#   checkerboard against the serial context of the same backbone (group_by=[transform]), with a
#   bootstrap interval over the evaluation images. The seed-to-seed spread of this recipe is
#   measured by the laptop study (results/laptop/seed_noise.md).
# * RD points during training every RD_EVERY steps (default 2500: the grid compares finished
#   models, so it spends little on trajectories).
# * then cbexp.bench (decode speed of the trained lambda=0.0035 models, side by side in one
#   process) and cbexp.analysis, all written to $OUT with the command, the machine and the times.
#
# Killed? Run it again: the sweep directory is fixed, so finished jobs are skipped and the others
# resume from their last checkpoint. Variables: PYTHON, OUT, SWEEP_DIR, TRANSFORMS (space
# separated, the slowest first), ENTROPIES, STEPS, LAMBDAS, SEED, RD_EVERY, JOBS, BENCH_REPEATS,
# BENCH_MAX_IMAGES, BENCH_LMBDA, TRACKING, EXTRA.
set -euo pipefail
: "${CBEXP_KODAK_DIR:?set CBEXP_KODAK_DIR to the Kodak folder (python -m cbexp.datasets download-kodak <dir>)}"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-experiments/results/grid}"
SWEEP_DIR="${SWEEP_DIR:-outputs/sweeps/grid}"
TRANSFORMS="${TRANSFORMS:-cheng2020_anchor_tiny mbt2018_tiny}"
ENTROPIES="${ENTROPIES:-autoregressive,checkerboard}"
STEPS="${STEPS:-5000}"
LAMBDAS="${LAMBDAS:-0.0018,0.0035,0.0067}"
SEED="${SEED:-0}"
RD_EVERY="${RD_EVERY:-2500}"
JOBS="${JOBS:-2}"
BENCH_REPEATS="${BENCH_REPEATS:-3}"
BENCH_LMBDA="${BENCH_LMBDA:-0.0035}"
BENCH_MAX_IMAGES="${BENCH_MAX_IMAGES:-4}"
START=$(date +%s)
mkdir -p "$OUT"

# One sweep directory for every backbone: one sweep id, one parent run.
for transform in $TRANSFORMS; do
  "$PYTHON" -m cbexp.run -m experiment=laptop transform="$transform" entropy="$ENTROPIES" \
    trainer.steps="$STEPS" lmbda="$LAMBDAS" trainer.seed="$SEED" trainer.rd_every="$RD_EVERY" \
    hydra/launcher=local_processes hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$SWEEP_DIR" \
    ${TRACKING:-} ${EXTRA:-}
done
TRAINED=$(date +%s)
SWEEP_ID=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['sweep_id'])" \
  "$SWEEP_DIR/mlflow_sweep.json")

# Decode speed of the trained models of one lambda, one process, side by side.
MODELS=$("$PYTHON" - "$SWEEP_DIR" "$BENCH_LMBDA" <<'PY'
import pathlib, sys, yaml
found = []
for config in sorted(pathlib.Path(sys.argv[1]).glob("*/config.yaml")):
  cfg = yaml.safe_load(config.read_text())
  if cfg["lmbda"] == float(sys.argv[2]) and (config.parent / "model").is_dir():
    found.append(str(config.parent / "model"))
print(",".join(found))
PY
)
if [ -z "$MODELS" ]; then
  echo "grid.sh: no trained lmbda=$BENCH_LMBDA models in $SWEEP_DIR (set BENCH_LMBDA)" >&2
  exit 2
fi
"$PYTHON" -m cbexp.bench model="$MODELS" images="$CBEXP_KODAK_DIR" repeats="$BENCH_REPEATS" \
  max_images="$BENCH_MAX_IMAGES" threads=2 out="$OUT/bench.csv"
END=$(date +%s)

"$PYTHON" - "$OUT/study.json" "$SWEEP_ID" "$START" "$TRAINED" "$END" <<'PY'
import json, os, platform, subprocess, sys
out, sweep_id, start, trained, end = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
            if line.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
json.dump({"command": "bash experiments/grid.sh", "sweep_id": sweep_id, "git_commit": commit,
           "environment": {k: os.environ[k] for k in ("TRANSFORMS", "ENTROPIES", "STEPS",
                                                      "LAMBDAS", "SEED", "RD_EVERY", "JOBS")
                           if k in os.environ},
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()},
           "train_set": "Kodak kodim01-10 (kodim11-12: validation, the RD points during training)",
           "eval_set": "Kodak kodim13-24 (never trained on)",
           "wall_time_s": {"sweeps": trained - start, "bench": end - trained,
                           "total": end - start}},
          open(out, "w"), indent=2)
print(f"study done in {(end - start) / 60:.1f} min: {out}")
PY

# Last: RD curves and the BD-rate of each model against the serial context of its own backbone.
"$PYTHON" -m cbexp.analysis sweep_id="$SWEEP_ID" anchor=autoregressive "group_by=[transform]" \
  out="$OUT" "title='Grid study: ${TRANSFORMS// /, }, $STEPS steps'" xlim=[0,1] \
  ${TRACKING:-}
