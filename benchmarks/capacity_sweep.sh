#!/usr/bin/env bash
# The accuracy evidence on the capacity-bound synthetic set, in one go: the set (capacity, 80 ids x 16
# cameras x 2 images, data seed 0), the `synthetic` preset trained with 3 training seeds (stage 1: 32 epochs, as
# the demo), then benchmarks/prune_sweep.py over the three dense models (one finetuning seed each, so every row's
# mean ± std is over the 3 training seeds): structured 80/60/45/35% without finetuning, with finetuning, with
# finetuning + distillation (2 epochs per level, the best epoch on validation), unstructured at the same budgets.
#
#   bash benchmarks/capacity_sweep.sh [OUT] [THREADS] [prune_sweep.py options ...]   # from the repository root;
#   resumable (rerun to continue); e.g. `... OUT 2 --distill-teacher previous` for the teacher before each cut
set -euo pipefail
OUT=${1:-capacity-sweep}
THREADS=${2:-2}
SEEDS=${SEEDS:-0 1 2}
export OMP_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
G="$PY -m graft_edge"
mkdir -p "$OUT"
[ -f "$OUT/data/graft_dataset.json" ] || $G synth --out "$OUT/data" --ids 80 --cameras 16 --images-per-camera 2 \
  --difficulty capacity --seed 0
MODELS=()
for S in $SEEDS; do
  RUN="$OUT/train-s$S"
  if [ ! -f "$RUN/best.pt" ] || [ -f "$RUN/last.pt" -a ! -f "$RUN/result.json" ]; then
    RESUME=(); [ -f "$RUN/last.pt" ] && RESUME=(--resume)
    /usr/bin/time -f "train seed $S: %e s" $G train --preset synthetic --data "$OUT/data" --out "$RUN" \
      --set train.stage1.epochs=32 --set train.seed=$S "${RESUME[@]}" 2>&1 | tail -n 3
  fi
  MODELS+=(--model "$RUN/best.pt")
done
/usr/bin/time -f "sweep: %e s" $PY benchmarks/prune_sweep.py "${MODELS[@]}" --data "$OUT/data" --out "$OUT/sweep" \
  --seeds 1 --finetune-epochs 2 --threads "$THREADS" "${@:3}"
