"""Welch tests of the Table 5.2 CBOW rows against unrouted CBOW, per column, from sci_dispatch result files.

    python benchmarks/sci_welch.py benchmarks/results/sci_init0/{joint_w0,joint_w1,joint_w2,previous_defaults,dm_wA}.json
"""

from __future__ import annotations

import argparse
import json
import statistics

from scipy import stats

METHODS = ["wp-signature", "classifier-signature", "wp-signature+D"]
COLUMNS = ["joint", "disjoint", "mismatch", "nested"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="sci_dispatch.py result files (their 'runs' are pooled)")
    ap.add_argument("--baseline", default="cbow")
    args = ap.parse_args()
    runs = [r for f in args.inputs for r in json.load(open(f))["runs"]]

    def acc(method: str, column: str) -> list[float]:
        return [100 * r["test_accuracy"] for r in runs if r["method"] == method and r["column"] == column]

    for column in COLUMNS:
        base = acc(args.baseline, column)
        for method in METHODS:
            a = acc(method, column)
            if len(a) < 2 or len(base) < 2:
                print(f"{column:9s} {method:22s} too few runs ({len(a)} / {len(base)})")
                continue
            p = stats.ttest_ind(a, base, equal_var=False).pvalue
            print(f"{column:9s} {method:22s} {statistics.mean(a):5.1f} vs {args.baseline} {statistics.mean(base):5.1f}"
                  f"  diff {statistics.mean(a) - statistics.mean(base):+5.1f}  Welch p = {p:.3f}  n = {len(a)} / {len(base)}")


if __name__ == "__main__":
    main()
