#!/bin/bash
# $1 = variant; runs the rows in priority order, resumable
cd /work/bench
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/bench HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V=$1
for spec in "0:MiniLM none" "0:MiniLM lora" "0:MiniLM block" "0:MiniLM attention" "0:MiniLM classifier" "1:MiniLM none" "1:MiniLM lora" "1:MiniLM block"; do
  seed=${spec%%:*}; row=${spec#*:}
  python benchmarks/sci_table52.py --sci_root /work/shared/data/sci --variant $V --parts minilm --rows "$row" \
    --seeds $seed --max_train_samples 0 --max_eval_samples 0 --minilm_epochs 1 --num_blocks 4 \
    --output /work/bench_out/t52/sci_table52_full_$V --resume
done
echo ALLDONE
