#!/bin/bash
# Table 5.2 disjoint + mismatch columns: CBOW and RNN rows, defaults and thesis preset, 3 seeds
W=$1
cd /work/wt52
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=benchmarks/results/sci_issue32
$PY -m benchmarks.sci_dispatch --variants disjoint mismatch --methods cbow classifier-signature wp-signature wp-signature+D \
  --seeds 0 1 2 --epochs 5 --stage2_epochs 3 --nested_epochs 2 --max_train_samples 0 --worker $W --workers 2 --resume \
  --out $R/dm_default_w$W.json > $R/dm_default_w$W.log 2>&1
$PY -m benchmarks.sci_dispatch --preset thesis --variants disjoint mismatch --methods cbow classifier-signature wp-signature wp-signature+D \
  --seeds 0 1 2 --epochs 5 --stage2_epochs 3 --nested_epochs 2 --max_train_samples 0 --worker $W --workers 2 --resume \
  --out $R/dm_thesis_w$W.json > $R/dm_thesis_w$W.log 2>&1
$PY -m benchmarks.sci_dispatch --variants disjoint mismatch --methods lstm lstm-classifier lstm-i2h lstm-h2h \
  --seeds 0 1 2 --epochs 5 --nested_epochs 2 --max_train_samples 0 --worker $W --workers 2 --resume \
  --out $R/rnn_dm_default_w$W.json > $R/rnn_dm_default_w$W.log 2>&1
$PY -m benchmarks.sci_dispatch --preset thesis --variants disjoint mismatch --methods lstm lstm-classifier lstm-i2h lstm-h2h \
  --seeds 0 1 2 --epochs 5 --nested_epochs 2 --max_train_samples 0 --worker $W --workers 2 --resume \
  --out $R/rnn_dm_thesis_w$W.json > $R/rnn_dm_thesis_w$W.log 2>&1
echo finished > $R/dm_queue_w$W.done
