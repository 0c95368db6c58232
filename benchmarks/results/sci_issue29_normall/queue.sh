#!/bin/bash
# issue 29: the online dispatchers at the new default (agent input standardised), 5 seeds x joint(+nested) / disjoint / mismatch
# usage: queue.sh CORE KIND [KIND...]   (run from the worktree root)
core=$1; shift
for kind in "$@"; do
  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 taskset -c $core /work/main/.venv/bin/python -m benchmarks.sci_dispatch \
    --variants joint disjoint mismatch --methods wp-$kind --seeds 0 1 2 3 4 --epochs 5 --stage2_epochs 3 --nested_epochs 2 \
    --max_train_samples 0 --resume --out benchmarks/results/sci_issue29_normall/$kind.json \
    > benchmarks/results/sci_issue29_normall/$kind.log 2>&1
done
