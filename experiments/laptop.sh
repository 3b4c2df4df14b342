#!/usr/bin/env bash
# The same study scaled down to a laptop: the tiny transform,
# ChARM vs checkerboard, 4 lambdas, 1500 steps of batch 8 on 64x64 crops of scikit-image's
# bundled photos (offline), the paper's schedule shape, evaluated on Kodak when $CBEXP_KODAK_DIR
# is set (else on the bundled photos), then the analysis. The numbers show the method, not the
# paper's result: tiny models on 6 training images are far from the published curves.
# 8 runs, one after the other: estimated 1-2 hours on 2 CPU cores (from the quickstart's
# speed; not measured end to end). Run from the repository root; run again to resume.
set -euo pipefail
PYTHON="${PYTHON:-python}"
SWEEP_DIR="${SWEEP_DIR:-outputs/sweeps/laptop}"
EVAL=default
if [ -n "${CBEXP_KODAK_DIR:-}" ]; then EVAL=kodak; fi

"$PYTHON" -m cbexp.run -m transform=tiny entropy=charm,checkerboard entropy.hidden_filters=[32,32] \
  lmbda=0.0035,0.0130,0.0483,0.18 dataset=default eval="$EVAL" eval.max_images=8 \
  trainer=tiny trainer.steps=1500 trainer.batch_size=8 trainer.patch_size=64 \
  trainer.val_every=500 trainer.checkpoint_every=250 trainer.log_every=100 \
  'schedule.rates=[1e-3,1e-4]' hydra.sweep.dir="$SWEEP_DIR"

SWEEP_ID=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['sweep_id'])" \
  "$SWEEP_DIR/mlflow_sweep.json")
"$PYTHON" -m cbexp.analysis sweep_id="$SWEEP_ID" anchor=charm out="analysis/laptop"
echo "analysis in analysis/laptop (sweep_id $SWEEP_ID)"
