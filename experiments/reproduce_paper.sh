#!/usr/bin/env bash
# The published comparison: ChARM vs checkerboard on the ms2020 transforms, a lambda sweep at the
# paper settings (2M steps, batch 8, 256x256 CLIC crops, lr 1e-4 -> 1e-5 for the last 10%),
# evaluated on Kodak with real bitstreams, then RD curves / BD-rate by cbexp.analysis.
#
# Needs: network for CLIC (tensorflow-datasets downloads it on first use), Kodak in
# $CBEXP_KODAK_DIR (python -m cbexp.datasets download-kodak <dir>), GPUs: 2M steps of the paper
# models are days per run on one GPU. Run from the repository root.
#
#   bash experiments/reproduce_paper.sh                     # all 12 runs, one after the other
#   LAUNCHER=submitit_slurm bash experiments/reproduce_paper.sh   # one Slurm job per run
#
# Killed or interrupted? Run the same command again: the sweep directory is fixed, so every
# job resumes from its last checkpoint in the same MLflow run, and finished jobs are skipped.
set -euo pipefail
: "${CBEXP_KODAK_DIR:?set CBEXP_KODAK_DIR to the Kodak folder}"
PYTHON="${PYTHON:-python}"
LAUNCHER="${LAUNCHER:-basic}"
SWEEP_DIR="${SWEEP_DIR:-outputs/sweeps/reproduce_paper}"
# Six lambdas, log-spaced (about 2x apart) around the paper's 0.01 (loss = bpp + lambda * MSE, 0..255).
LAMBDAS="${LAMBDAS:-0.0018,0.0035,0.0067,0.0130,0.0250,0.0483}"

# Parallel jobs on one sqlite file wait for its lock (MLflow's busy timeout); for many parallel jobs a
# tracking server is better: TRACKING="tracking=server tracking.uri=http://host:5000".
"$PYTHON" -m cbexp.run -m experiment=paper_charm,paper_checkerboard lmbda="$LAMBDAS" \
  hydra/launcher="$LAUNCHER" hydra.sweep.dir="$SWEEP_DIR" ${TRACKING:-}

SWEEP_ID=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['sweep_id'])" \
  "$SWEEP_DIR/mlflow_sweep.json")
"$PYTHON" -m cbexp.analysis sweep_id="$SWEEP_ID" anchor=charm out="analysis/reproduce_paper"
echo "analysis in analysis/reproduce_paper (sweep_id $SWEEP_ID)"
