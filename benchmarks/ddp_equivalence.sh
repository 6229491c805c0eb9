#!/usr/bin/env bash
# One process against two on the capacity-bound synthetic set: the `synthetic` preset (stage 1: 32 epochs, as the
# demo) in the sliced mode (data.anchor_repeats=1: the P x K batch is the global batch, cut into one slice per
# process; 32 steps per epoch, as the preset's own mode), trained with --nproc 1 and --nproc 2 for each training
# seed, then benchmarks/ddp_summary.py: per-seed test mAP, the paired difference and its 95% t-interval.
#
#   bash benchmarks/ddp_equivalence.sh [OUT] [--set KEY=VALUE ...]   # from the repository root; resumable
#   (e.g. `... OUT-nodrop --set model.enc_dropout=0` for the exactly equivalent recipe)
set -euo pipefail
OUT=${1:-ddp-equivalence}
SEEDS=${SEEDS:-0 1 2}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
G="$PY -m graft_edge"
mkdir -p "$OUT"
DATA=${DATA:-$OUT/data}
[ -f "$DATA/graft_dataset.json" ] || $G synth --out "$DATA" --ids 80 --cameras 16 --images-per-camera 2 \
  --difficulty capacity --seed 0
for S in $SEEDS; do
  for N in 1 2; do
    RUN="$OUT/n$N-s$S"
    [ -f "$RUN/result.json" ] && continue
    RESUME=(); [ -f "$RUN/last.pt" ] && RESUME=(--resume)
    /usr/bin/time -f "nproc $N seed $S: %e s" $G train --preset synthetic --data "$DATA" --out "$RUN" --threads 1 \
      --nproc $N --set train.stage1.epochs=32 --set data.anchor_repeats=1 --set train.seed=$S "${@:2}" \
      "${RESUME[@]}" 2>&1 | tail -n 2
  done
done
$PY benchmarks/ddp_summary.py "$OUT"
