#!/bin/bash
# issue 29: the MiniLM block and classifier routes at the current router defaults (capacity balance 0.5), seed 0
# usage: minilm_queue.sh CORE "VARIANT:ROW" ...   (from the worktree root)
core=$1; shift
for spec in "$@"; do
  v=${spec%%:*}; row=${spec#*:}; tag=$(echo ${row#MiniLM } | tr ' ' '_')
  PYTHONPATH=$PWD HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c $core /work/main/.venv/bin/python benchmarks/sci_table52.py \
    --sci_root ../shared/data/sci --variant $v --parts minilm --rows "$row" --seeds 0 --max_train_samples 0 \
    --max_eval_samples 0 --minilm_epochs 1 --num_blocks 4 \
    --output benchmarks/results/sci_issue29_minilm/sci_table52_${v}_${tag} --resume \
    > benchmarks/results/sci_issue29_minilm/sci_table52_${v}_${tag}.log 2>&1
done
