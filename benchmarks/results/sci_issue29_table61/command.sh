.venv/bin/python -m benchmarks.sci_dispatch --report_only --out benchmarks/results/sci_issue29_table61/table61_5seeds.json \
 --rename wp-basic/mi-adam=wp-basic wp-rbae-cbow/mi-adam=wp-rbae-cbow wp-rbae-onehot/mi-adam=wp-rbae-onehot wp-rbae-seq/norm-enc=wp-rbae-seq wp-signature+D/meta-pair=wp-signature+D \
 --keep cbow wp-signature wp-signature+D wp-basic wp-rbae-cbow wp-rbae-attn wp-rbae-onehot wp-rbae-seq \
 --inputs benchmarks/results/sci_issue29/joint_pair_warm.json benchmarks/results/sci_issue29/cols_pair.json benchmarks/results/sci_issue29_cols5/seeds34.json benchmarks/results/sci_issue29/cols.json \
  benchmarks/results/sci_issue29/joint_w0.json benchmarks/results/sci_issue29/joint_w1.json benchmarks/results/sci_issue29/joint_s34.json benchmarks/results/sci_issue29_cols5/online.json \
  benchmarks/results/sci_issue29_cols5/rbae_attn.json benchmarks/results/sci_issue29_cols5/rbae_attn_s34.json benchmarks/results/sci_issue29_cols5/rbae_attn_cols.json \
  benchmarks/results/sci_issue29_norm/seq_norm_enc.json benchmarks/results/sci_issue29_norm/seq_default_joint_s3.json benchmarks/results/sci_issue29_norm/seq_default_joint_s4.json \
  benchmarks/results/sci_issue29_norm/seq_default_cols.json benchmarks/results/sci_issue29_norm/seq_default_mismatch_s2.json benchmarks/results/sci_issue29_norm/seq_default_cols_s34.json \
  benchmarks/results/sci_init0/all.json:cbow
