#!/usr/bin/env bash
# The decode conformance matrix: every trained model of a sweep at one lambda, encoded
# on the 24 Kodak images in the reference configuration and decoded in fresh processes with other
# thread counts, oneDNN off, an AVX2 cap and bfloat16 synthesis (and the GPU when one is visible).
# Results: $OUT/conformance.csv, conformance_per_image.csv, conformance.json (command, machine,
# wall time), and one MLflow run per row in the experiment `conformance`.
#
#   SWEEP=/work/studies/sweep LAMBDA=0.013 experiments/conformance.sh
#
# Variables: PYTHON, SWEEP (a Hydra multirun folder whose jobs hold model/), LAMBDA, ENTROPY
# (models to take from the sweep), NUMERICS (float, or float,exact),
# CONFIGS (empty: the command's defaults), MAX_IMAGES (0: all), OUT, TRACKING (MLflow URI).
# Extra arguments are passed to python -m cbexp.conformance.
set -euo pipefail
PYTHON=${PYTHON:-python}
SWEEP=${SWEEP:-/work/studies/sweep}
LAMBDA=${LAMBDA:-0.013}
ENTROPY=${ENTROPY:-"hyperprior checkerboard charm charm_checkerboard"}
NUMERICS=${NUMERICS:-float}
CONFIGS=${CONFIGS:-}
MAX_IMAGES=${MAX_IMAGES:-0}
OUT=${OUT:-experiments/results/conformance}
TRACKING=${TRACKING:-sqlite:///mlflow.db}

dirs=()
for entropy in $ENTROPY; do
  # Hydra job folders: <n>_entropy=<name>,...,lmbda=<lambda>,... ; only finished jobs have model/.
  found=$(ls -d "$SWEEP"/*_entropy="$entropy",*lmbda="$LAMBDA",*/model 2>/dev/null | head -1 || true)
  if [[ -z "$found" ]]; then
    echo "conformance.sh: no finished $entropy model at lambda $LAMBDA in $SWEEP: skipped" >&2
    continue
  fi
  dirs+=("$found")
done
if [[ ${#dirs[@]} -eq 0 ]]; then
  echo "conformance.sh: no model found" >&2
  exit 2
fi
models=$(IFS=,; echo "${dirs[*]}")
args=("model=$models" "numerics=$NUMERICS" "max_images=$MAX_IMAGES" "out=$OUT"
      "mlflow=$TRACKING")
[[ -n "$CONFIGS" ]] && args+=("configs=$CONFIGS")
mkdir -p "$OUT"
start=$(date +%s)
"$PYTHON" -m cbexp.conformance "${args[@]}" "$@" | tee "$OUT/conformance.txt"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/conformance.txt"
