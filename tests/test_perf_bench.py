"""Smoke test of the performance suite (benchmarks/perf.py): it runs and writes its report."""

import importlib.util
import json

from .conftest import REPO_ROOT


def test_perf_suite_quick_run_writes_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("perf_bench", REPO_ROOT / "benchmarks" / "perf.py")
    perf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(perf)
    out = tmp_path / "perf"
    result = perf.main(["--quick", "--only", "mlp", "cbow", "scaling", "--output", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert {r["model"] for r in saved["ratios"]} == {"mlp", "mlp-256", "cbow+wp"}
    for r in saved["ratios"]:
        assert r["ratio"] > 0 and r["routed_ms"] > 0 and r["step_peak_mb"]["wp" if r["model"] == "cbow+wp" else "routing"] > 0
    methods = {(r["sweep"], r["method"]) for r in saved["scaling"]}
    assert methods == {("blocks", "routing"), ("blocks", "soft-mixture"), ("tasks", "routing"),
                       ("tasks", "soft-mixture"), ("tasks", "cross-stitch")}
    assert out.with_suffix(".png").exists() and result["verdicts"]
